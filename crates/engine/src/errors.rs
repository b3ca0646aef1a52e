//! Reading an error with its causes: [`error_chain`].

/// An error's message followed by each source's that adds something: reqwest says only
/// "error sending request" and tera "failed to render", the cause is in the sources.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);
    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn causes_are_appended_unless_already_said() {
        let e = Layer(
            "error sending request",
            Some(Box::new(Layer(
                "connect",
                Some(Box::new(Layer("refused", None))),
            ))),
        );
        assert_eq!(
            super::error_chain(&e),
            "error sending request: connect: refused"
        );
        let repeated = Layer("connect: refused", Some(Box::new(Layer("refused", None))));
        assert_eq!(super::error_chain(&repeated), "connect: refused");
    }
}
