//! Upper limits on request sizes, equal to `shared_schema/wire/limits.json` (a test
//! checks that they are).

/// Most samples, or rows of z / x, in one engine call. The service's wire limit
/// (`max_n` in limits.json, 256) is stricter; direct callers may batch more.
pub const MAX_BATCH: usize = 4096;
/// Most new tokens one generate_text call may ask for.
pub const MAX_NEW_TOKENS: usize = 1024;
/// Longest prompt, in characters.
pub const MAX_PROMPT_CHARS: usize = 1024;
/// Highest sampling temperature.
pub const MAX_TEMPERATURE: f32 = 10.0;
/// Lowest sampling temperature above 0 (greedy): below it, logits / temperature
/// overflows float32 and the softmax weights become NaN.
pub const MIN_TEMPERATURE: f32 = 0.01;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_the_shared_limits() {
        let limits: serde_json::Value =
            serde_json::from_str(include_str!("../../../shared_schema/wire/limits.json")).unwrap();
        for key in ["max_n", "max_z_rows", "max_x_rows"] {
            assert!(limits[key].as_u64().unwrap() as usize <= MAX_BATCH, "{key}");
        }
        assert_eq!(limits["max_new_tokens"], MAX_NEW_TOKENS);
        assert_eq!(limits["max_prompt_chars"], MAX_PROMPT_CHARS);
        assert_eq!(
            limits["max_temperature"].as_f64(),
            Some(MAX_TEMPERATURE as f64)
        );
        assert_eq!(
            limits["min_temperature"].as_f64().map(|t| t as f32),
            Some(MIN_TEMPERATURE)
        );
    }
}
