//! How a failed command reads: one line naming the failure and its causes, without the backtrace
//! candle attaches when `RUST_BACKTRACE` is set, and with what to do when the GPU ran out of
//! memory.

use std::backtrace::Backtrace;

/// One cause's message: candle's without the backtrace it carries (formatting that resolves
/// every frame's symbols).
fn message(cause: &(dyn std::error::Error + 'static)) -> String {
    match cause.downcast_ref::<candle_core::Error>() {
        Some(candle_core::Error::WithBacktrace { inner, .. }) => inner.to_string(),
        _ => cause.to_string(),
    }
}

/// Whether the failure (any cause in its chain) is the GPU running out of memory.
pub fn is_out_of_gpu_memory(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|cause| message(cause).contains("CUDA_ERROR_OUT_OF_MEMORY"))
}

/// The failure on one line: each cause's [`message`], joined by ": " as anyhow's `{:#}` joins
/// them, then a hint when the GPU ran out of memory.
pub fn describe(err: &anyhow::Error) -> String {
    let causes: Vec<String> = err.chain().map(message).collect();
    let mut line = causes.join(": ");
    if is_out_of_gpu_memory(err) {
        line.push_str(
            " (the GPU is out of memory: lower --batch-size, or end the other processes using it)",
        );
    }
    line
}

/// The backtrace candle captured for the failure, if the user asked for one (`RUST_BACKTRACE`).
pub fn backtrace(err: &anyhow::Error) -> Option<&Backtrace> {
    err.chain()
        .find_map(|cause| match cause.downcast_ref::<candle_core::Error>() {
            Some(candle_core::Error::WithBacktrace { backtrace, .. }) => Some(backtrace.as_ref()),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    fn with_backtrace(msg: &str) -> candle_core::Error {
        candle_core::Error::WithBacktrace {
            inner: Box::new(candle_core::Error::Msg(msg.into())),
            backtrace: Box::new(Backtrace::force_capture()),
        }
    }

    #[test]
    fn gpu_out_of_memory_reads_as_one_line_with_what_to_do() {
        let oom = with_backtrace("DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")");
        let err = Err::<(), _>(oom).context("scoring samples").unwrap_err();
        let line = describe(&err);
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.starts_with("scoring samples: DriverError(CUDA_ERROR_OUT_OF_MEMORY"),
            "{line}"
        );
        assert!(line.contains("lower --batch-size"), "{line}");
        assert!(is_out_of_gpu_memory(&err));
        assert!(backtrace(&err).is_some());
    }

    #[test]
    fn other_failures_read_as_anyhow_prints_them() {
        let err = Err::<(), _>(candle_core::Error::Msg("shape mismatch".into()))
            .context("decoding tokens")
            .context("sample")
            .unwrap_err();
        assert_eq!(describe(&err), format!("{err:#}"));
        assert!(!is_out_of_gpu_memory(&err));
        assert!(backtrace(&err).is_none());
        let plain = anyhow::anyhow!("--class dog: unknown class (valid: 0, 1)");
        assert_eq!(describe(&plain), "--class dog: unknown class (valid: 0, 1)");
    }
}
