//! Secrets come from the environment or from a file named by `<NAME>_FILE`, never from defaults in
//! production.

use secrecy::SecretString;

/// Reads `name` from the environment, or the contents of the file named by `name_FILE` (trailing
/// newline trimmed). `Ok(None)` when neither is set.
pub fn from_env_or_file(name: &str) -> anyhow::Result<Option<SecretString>> {
    if let Ok(value) = std::env::var(name) {
        return Ok(Some(SecretString::from(value)));
    }
    let file_var = format!("{name}_FILE");
    match std::env::var(&file_var) {
        Ok(path) => {
            let text =
                std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("cannot read {file_var} ({path}): {e}"))?;
            Ok(Some(SecretString::from(text.trim_end_matches(['\n', '\r']).to_owned())))
        }
        Err(_) => Ok(None),
    }
}
