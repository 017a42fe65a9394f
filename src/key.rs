//! [`NodeKey`]: the node's long-term Ed25519 identity key, and its key file.
//!
//! The id of a node ([`PeerId`]) is derived from this key's public half. The secret-connection
//! handshake proves possession of the key by signing a per-connection challenge.
//!
//! # Key file
//!
//! The key is stored as TM2 stores it (default `<home>/secrets/node_key.json`):
//!
//! ```text
//! {"priv_key":"<standard base64 of 64 bytes>"}
//! ```
//!
//! The 64 bytes are Go's `ed25519.PrivateKey` layout: the 32-byte seed followed by the 32-byte
//! public key derived from it ([`NodeKey::to_keypair_bytes`]). The parsing half
//! ([`NodeKey::from_key_file_json`]) works on bytes and is separate from the file I/O
//! ([`NodeKey::load`], [`NodeKey::save`], [`NodeKey::load_or_generate`]), which the binary and
//! the builder call once at start, never on a hot path.
//!
//! On Unix the file is created with mode `0600` (never wider, not even for an instant), and a
//! key file that group or others may read or write is refused. Only a regular file is read, and
//! only up to [`MAX_KEY_FILE_LEN`] bytes.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::Deserialize;

use crate::config::{open_regular_file, read_capped};
use crate::types::PeerId;

/// Length of an Ed25519 seed (the private half TM2 stores first).
pub const SEED_LEN: usize = 32;
/// Length of an Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Length of the private key as TM2 stores it: Go's `ed25519.PrivateKey` layout,
/// seed (32) || public key (32).
pub const KEYPAIR_LEN: usize = SEED_LEN + PUBLIC_KEY_LEN;
/// The mode a key file is created with on Unix: read and write for the owner only.
pub const KEY_FILE_MODE: u32 = 0o600;
/// The largest key file [`NodeKey::load`] reads: 64 KiB.
///
/// A real key file is 103 bytes (`{"priv_key":"` + 88 characters of base64 + `"}`); the limit
/// leaves room for whitespace and newlines that an editor or a tool may add, and is still far
/// too small to hurt. It exists because the path may name anything (a misconfigured
/// `node_key_file` pointing at a multi-gigabyte log, a file filled by another local user): at
/// most one byte more than this is read or held in memory, whatever length the file system
/// reports.
pub const MAX_KEY_FILE_LEN: u64 = 64 * 1024;

/// The node's Ed25519 identity key.
///
/// Holds the 32-byte seed (from which ring expands the signing key) and the derived key pair.
/// `Debug` never prints the seed.
///
/// ```
/// use tm2_p2p::NodeKey;
/// let dir = std::env::temp_dir().join(format!("tm2p2p-doc-{}", std::process::id()));
/// let path = dir.join("secrets/node_key.json");
/// let key = NodeKey::load_or_generate(&path)?; // created (mode 0600) on first use
/// assert_eq!(NodeKey::load(&path)?.id(), key.id()); // the same identity on restart
/// assert!(key.id().to_string().starts_with("g1"));
/// # std::fs::remove_dir_all(dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct NodeKey {
    /// The private seed; kept so the key can be written back in TM2's 64-byte layout.
    seed: [u8; SEED_LEN],
    /// The expanded key pair used for signing, shared so that a clone (one per handshake in
    /// progress) costs a reference count, not a key expansion.
    pair: Arc<Ed25519KeyPair>,
}

/// Why a key could not be created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The system RNG failed (the OS refused to hand out randomness).
    #[error("the system random number generator failed")]
    Rng,
    /// ring refused the seed (does not happen for 32-byte seeds; kept so it is no panic).
    #[error("invalid Ed25519 seed")]
    InvalidSeed,
}

/// Why the contents of a key file do not hold a valid key (the file was read; its bytes are
/// wrong). Never fixed up silently: the operator decides what to do with the file.
#[derive(Debug, thiserror::Error)]
pub enum KeyFormatError {
    /// The contents are not JSON of the shape `{"priv_key": "<base64>"}`: empty or truncated
    /// input, a missing `priv_key`, a value that is not a string, or an unknown extra field.
    #[error("not a key file of the shape {{\"priv_key\": \"<base64>\"}}: {0}")]
    Json(#[source] serde_json::Error),
    /// `priv_key` is not standard, padded base64.
    #[error("priv_key is not valid base64: {0}")]
    Base64(#[source] base64::DecodeError),
    /// `priv_key` decodes to a length other than 64 bytes.
    #[error("priv_key is {len} bytes long, expected {KEYPAIR_LEN} (seed || public key)")]
    Length {
        /// The decoded length.
        len: usize,
    },
    /// The public half (bytes 32..64) is not the public key derived from the seed (bytes 0..32).
    #[error("the public key stored in priv_key does not match the one derived from its seed")]
    PublicKeyMismatch,
    /// ring refused the seed (does not happen for 32-byte seeds; kept so it is no panic).
    #[error("invalid Ed25519 seed")]
    InvalidSeed,
}

/// Why a key file could not be loaded or saved. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be opened or read: missing, not a regular file (a directory, a pipe,
    /// a device), no permission, an I/O error.
    #[error("cannot read key file {}: {source}", path.display())]
    Read {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The key could not be written: creating the directory or the temporary file, writing,
    /// syncing or renaming it failed.
    #[error("cannot write key file {}: {source}", path.display())]
    Write {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file may be read or written by group or others (any of the mode bits `0o077`). The
    /// key is not used, since anyone who read it can impersonate the node.
    #[error(
        "key file {} has mode {mode:03o}, readable or writable by group or others; \
         restrict it with `chmod 600 {}` (or move it away to generate a new key)",
        path.display(),
        path.display()
    )]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// The permission bits found (`mode & 0o777`).
        mode: u32,
    },
    /// The file holds more than `limit` ([`MAX_KEY_FILE_LEN`]) bytes, so it is no key file.
    /// Nothing of it is parsed (reading stopped at `limit + 1` bytes), and it is never
    /// replaced.
    #[error(
        "key file {} is larger than {limit} bytes, the most a key file may be; is it the right \
         file?",
        path.display()
    )]
    TooLarge {
        /// The key file.
        path: PathBuf,
        /// The most bytes accepted ([`MAX_KEY_FILE_LEN`]).
        limit: u64,
    },
    /// The file was read but does not hold a valid key.
    #[error("key file {} is corrupt: {source}", path.display())]
    Format {
        /// The key file.
        path: PathBuf,
        /// What is wrong with its contents.
        source: KeyFormatError,
    },
    /// [`NodeKey::load_or_generate`] found no file and could not generate a key.
    #[error("cannot generate a node key: {0}")]
    Generate(#[from] KeyError),
}

/// The JSON shape of a key file (TM2's amino JSON of `NodeKey`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFileJson {
    /// Standard base64 of [`NodeKey::to_keypair_bytes`].
    priv_key: String,
}

impl NodeKey {
    /// Generates a new key from the system RNG.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0; SEED_LEN];
        SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| KeyError::Rng)?;
        Self::from_seed(seed)
    }

    /// Builds the key from a 32-byte Ed25519 seed.
    pub fn from_seed(seed: [u8; SEED_LEN]) -> Result<Self, KeyError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|_| KeyError::InvalidSeed)?;
        Ok(Self {
            seed,
            pair: Arc::new(pair),
        })
    }

    /// The 32-byte seed (private: handle with care).
    pub fn seed(&self) -> &[u8; SEED_LEN] {
        &self.seed
    }

    /// The 32-byte Ed25519 public key.
    pub fn public_key(&self) -> [u8; PUBLIC_KEY_LEN] {
        let mut out = [0; PUBLIC_KEY_LEN];
        out.copy_from_slice(self.pair.public_key().as_ref());
        out
    }

    /// This node's id, derived from the public key.
    pub fn id(&self) -> PeerId {
        PeerId::from_public_key(&self.public_key())
    }

    /// Signs `message` with pure Ed25519.
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        let mut out = [0; SIGNATURE_LEN];
        out.copy_from_slice(self.pair.sign(message).as_ref());
        out
    }
}

impl NodeKey {
    /// The private key in TM2's 64-byte layout (Go's `ed25519.PrivateKey`): the seed
    /// followed by the public key. Contains the secret seed: handle with care.
    pub fn to_keypair_bytes(&self) -> [u8; KEYPAIR_LEN] {
        let mut out = [0; KEYPAIR_LEN];
        out[..SEED_LEN].copy_from_slice(&self.seed);
        out[SEED_LEN..].copy_from_slice(&self.public_key());
        out
    }

    /// Parses TM2's 64-byte layout (seed || public key).
    ///
    /// Unlike TM2, the public half is really checked: the seed is expanded again and the
    /// derived public key must equal the stored one. (TM2's "embedded pubkey equals derived
    /// pubkey" check is tautological, because its derivation just copies bytes 32..64 and never
    /// re-expands the seed, so a file with a wrong public half loads there and yields an id
    /// that does not match the signatures the node makes.)
    pub fn from_keypair_bytes(bytes: &[u8]) -> Result<Self, KeyFormatError> {
        let Ok(pair) = <&[u8; KEYPAIR_LEN]>::try_from(bytes) else {
            return Err(KeyFormatError::Length { len: bytes.len() });
        };
        let (seed, public) = pair.split_at(SEED_LEN);
        let mut seed_arr = [0; SEED_LEN];
        seed_arr.copy_from_slice(seed);
        let key = Self::from_seed(seed_arr).map_err(|_| KeyFormatError::InvalidSeed)?;
        if key.public_key() != public {
            return Err(KeyFormatError::PublicKeyMismatch);
        }
        Ok(key)
    }

    /// The key file's contents: exactly `{"priv_key":"<standard base64 of 64 bytes>"}`.
    /// Contains the secret seed.
    pub fn to_key_file_json(&self) -> String {
        // Written by hand: the base64 alphabet (A-Z a-z 0-9 + / =) needs no JSON escaping, and
        // this pins the exact bytes TM2 reads.
        format!(
            "{{\"priv_key\":\"{}\"}}",
            BASE64.encode(self.to_keypair_bytes())
        )
    }

    /// Parses a key file's contents (see [`to_key_file_json`](Self::to_key_file_json)).
    /// Unknown fields, a missing field, a wrong type, bad base64, a length other than 64 bytes
    /// and a public half that does not match the seed are all errors.
    pub fn from_key_file_json(json: &[u8]) -> Result<Self, KeyFormatError> {
        let file: KeyFileJson = serde_json::from_slice(json).map_err(KeyFormatError::Json)?;
        let bytes = BASE64
            .decode(file.priv_key.as_bytes())
            .map_err(KeyFormatError::Base64)?;
        Self::from_keypair_bytes(&bytes)
    }

    /// Loads the key file at `path`.
    ///
    /// On Unix a file whose mode grants group or others any access is refused
    /// ([`KeyFileError::Permissions`], whose message says to `chmod 600` it). A file that cannot
    /// be read, or holds no valid key, is an error too; nothing is ever replaced.
    ///
    /// Only a regular file (or a symlink to one) is read: anything else (a directory, a pipe, a
    /// device such as `/dev/zero`) is [`KeyFileError::Read`], found before opening it, so a
    /// pipe with no writer does not block. A file of more than [`MAX_KEY_FILE_LEN`] bytes is
    /// [`KeyFileError::TooLarge`], found after reading one byte past the limit.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, KeyFileError> {
        let path = path.as_ref();
        let read_err = |source| KeyFileError::Read {
            path: path.to_owned(),
            source,
        };
        // The mode and the contents are those of one open file (a regular one).
        let (file, metadata) = open_regular_file(path).map_err(read_err)?;
        #[cfg(unix)]
        check_permissions(&metadata, path)?;
        let Some(json) = read_capped(file, MAX_KEY_FILE_LEN).map_err(read_err)? else {
            return Err(KeyFileError::TooLarge {
                path: path.to_owned(),
                limit: MAX_KEY_FILE_LEN,
            });
        };
        Self::from_key_file_json(&json).map_err(|source| KeyFileError::Format {
            path: path.to_owned(),
            source,
        })
    }

    /// Writes the key file at `path`, creating missing parent directories (mode `0700` on
    /// Unix).
    ///
    /// Atomic: the key goes to a temporary file in the same directory, created with mode `0600`,
    /// which is synced and then renamed over `path`, and the directory is synced. A reader
    /// sees either the old file or the complete new one, never a partial key. An existing file
    /// at `path` is replaced (only by that rename).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), KeyFileError> {
        let path = path.as_ref();
        let tmp = self.write_temp(path)?;
        if let Err(source) = fs::rename(&tmp, path) {
            remove_temp(&tmp);
            return Err(write_err(path, source));
        }
        sync_parent(path)
    }

    /// Loads the key file at `path` if it exists; otherwise generates a key, saves it there and
    /// returns it.
    ///
    /// Never overwrites an existing file: the new key is published with a hard link, which fails
    /// if the file appeared meanwhile (another process starting on the same home), and then
    /// that file is loaded. Errors other than "not found" propagate, so a corrupt or
    /// world-readable key is reported, never replaced by a new identity.
    pub fn load_or_generate(path: impl AsRef<Path>) -> Result<Self, KeyFileError> {
        let path = path.as_ref();
        match Self::load(path) {
            Err(KeyFileError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            loaded => return loaded,
        }
        let key = Self::generate()?;
        if key.save_new(path)? {
            Ok(key)
        } else {
            Self::load(path)
        }
    }

    /// Like [`save`](Self::save) but never replaces an existing file: returns `false` (and
    /// writes nothing) if `path` exists.
    fn save_new(&self, path: &Path) -> Result<bool, KeyFileError> {
        let tmp = self.write_temp(path)?;
        let created = match fs::hard_link(&tmp, path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            // Some filesystems cannot hard-link. There, fall back to a rename after an existence
            // check, accepting the small window between the two.
            Err(_) => match path.try_exists() {
                Ok(true) => Ok(false),
                Ok(false) => fs::rename(&tmp, path).map(|()| true),
                Err(e) => Err(e),
            },
        };
        remove_temp(&tmp);
        let created = created.map_err(|source| write_err(path, source))?;
        if created {
            sync_parent(path)?;
        }
        Ok(created)
    }

    /// Creates the parent directories, then writes and syncs the key to a fresh temporary file
    /// next to `path` (mode `0600` from creation on Unix), and returns the temporary path.
    fn write_temp(&self, path: &Path) -> Result<PathBuf, KeyFileError> {
        let dir = parent_dir(path);
        let Some(name) = path.file_name() else {
            let source = io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name");
            return Err(write_err(path, source));
        };
        create_dirs(dir).map_err(|source| write_err(path, source))?;

        let mut suffix = [0; 8];
        SystemRandom::new()
            .fill(&mut suffix)
            .map_err(|_| write_err(path, io::Error::other("the system RNG failed")))?;
        let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{suffix}.tmp"));
        let tmp = dir.join(tmp_name);

        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, KEY_FILE_MODE);
        let mut file = options
            .open(&tmp)
            .map_err(|source| write_err(path, source))?;
        let written = file
            .write_all(self.to_key_file_json().as_bytes())
            .and_then(|()| file.sync_all());
        if let Err(source) = written {
            remove_temp(&tmp);
            return Err(write_err(path, source));
        }
        Ok(tmp)
    }
}

fn write_err(path: &Path, source: io::Error) -> KeyFileError {
    KeyFileError::Write {
        path: path.to_owned(),
        source,
    }
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Creates `dir` and its missing ancestors; on Unix new directories get mode `0700`, since they
/// hold secrets.
fn create_dirs(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Removes a temporary file after a failure or a hard link. Best effort: the original error (or
/// success) is what the caller reports, and a leftover dot-file holds nothing a reader loads.
fn remove_temp(tmp: &Path) {
    let _ = fs::remove_file(tmp);
}

/// Syncs the directory holding `path`, so a completed rename or link survives a crash.
fn sync_parent(path: &Path) -> Result<(), KeyFileError> {
    #[cfg(unix)]
    File::open(parent_dir(path))
        .and_then(|dir| dir.sync_all())
        .map_err(|source| write_err(path, source))?;
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Refuses a key file that group or others may access.
#[cfg(unix)]
fn check_permissions(metadata: &fs::Metadata, path: &Path) -> Result<(), KeyFileError> {
    use std::os::unix::fs::PermissionsExt;

    let mode = metadata.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions {
            path: path.to_owned(),
            mode: mode & 0o777,
        });
    }
    Ok(())
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKey")
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
}

/// Verifies an Ed25519 signature by `public_key` over `message`.
pub fn verify(public_key: &[u8; PUBLIC_KEY_LEN], message: &[u8], signature: &[u8]) -> bool {
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public_key)
        .verify(message, signature)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `contents` to `dir/name` with `mode` and returns the path.
    fn key_file(dir: &tempfile::TempDir, contents: &[u8], mode: u32) -> PathBuf {
        let path = dir.path().join("node_key.json");
        fs::write(&path, contents).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        }
        path
    }

    fn json_of(bytes: &[u8]) -> String {
        format!(r#"{{"priv_key":"{}"}}"#, BASE64.encode(bytes))
    }

    fn format_error(contents: &[u8]) -> KeyFormatError {
        let dir = tempfile::tempdir().unwrap();
        let path = key_file(&dir, contents, 0o600);
        match NodeKey::load(&path) {
            Err(KeyFileError::Format { path: p, source }) => {
                assert_eq!(p, path);
                source
            }
            other => panic!("expected a format error, got {other:?}"),
        }
    }

    #[test]
    fn empty_file_is_a_json_error() {
        assert!(matches!(format_error(b""), KeyFormatError::Json(_)));
    }

    #[test]
    fn truncated_json_is_a_json_error() {
        let key = NodeKey::from_seed([7; 32]).unwrap();
        let json = key.to_key_file_json();
        for cut in [1, json.len() / 2, json.len() - 1] {
            let err = format_error(&json.as_bytes()[..cut]);
            assert!(matches!(err, KeyFormatError::Json(_)), "cut {cut}: {err}");
        }
    }

    #[test]
    fn wrong_shapes_are_json_errors() {
        let good = NodeKey::from_seed([7; 32]).unwrap().to_keypair_bytes();
        let b64 = BASE64.encode(good);
        for bad in [
            "{}".to_owned(),
            "[]".to_owned(),
            r#"{"priv_key":5}"#.to_owned(),
            r#"{"priv_key":null}"#.to_owned(),
            format!(r#"{{"priv_key":"{b64}","pub_key":"x"}}"#),
            format!(r#"{{"@type":"/tm.PrivKeyEd25519","value":"{b64}"}}"#),
            format!(r#"{{"priv_key":"{b64}"}} trailing"#),
        ] {
            let err = NodeKey::from_key_file_json(bad.as_bytes()).unwrap_err();
            assert!(matches!(err, KeyFormatError::Json(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn bad_base64_is_refused() {
        let err = format_error(br#"{"priv_key":"not base64!"}"#);
        assert!(matches!(err, KeyFormatError::Base64(_)), "{err}");
        // Unpadded base64 of 64 bytes: TM2 writes padded standard base64 only.
        let good = NodeKey::from_seed([7; 32]).unwrap().to_keypair_bytes();
        let unpadded = BASE64.encode(good).trim_end_matches('=').to_owned();
        let err = NodeKey::from_key_file_json(format!(r#"{{"priv_key":"{unpadded}"}}"#).as_bytes())
            .unwrap_err();
        assert!(matches!(err, KeyFormatError::Base64(_)), "{err}");
    }

    #[test]
    fn wrong_lengths_are_refused() {
        let good = NodeKey::from_seed([7; 32]).unwrap().to_keypair_bytes();
        for len in [0, 32, 63, 65] {
            let mut bytes = good.to_vec();
            bytes.resize(len, 0);
            let err = format_error(json_of(&bytes).as_bytes());
            assert!(
                matches!(err, KeyFormatError::Length { len: l } if l == len),
                "{len}: {err}"
            );
        }
    }

    #[test]
    fn mismatched_public_half_is_refused() {
        let mut bytes = NodeKey::from_seed([7; 32]).unwrap().to_keypair_bytes();
        bytes[SEED_LEN..].copy_from_slice(&NodeKey::from_seed([8; 32]).unwrap().public_key());
        let err = format_error(json_of(&bytes).as_bytes());
        assert!(matches!(err, KeyFormatError::PublicKeyMismatch), "{err}");
        // An all-zero public half (which TM2 refuses explicitly) is a mismatch too.
        bytes[SEED_LEN..].fill(0);
        let err = NodeKey::from_keypair_bytes(&bytes).err().unwrap();
        assert!(matches!(err, KeyFormatError::PublicKeyMismatch), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn key_file_readable_by_others_is_refused_with_a_fix() {
        let dir = tempfile::tempdir().unwrap();
        let json = NodeKey::from_seed([7; 32]).unwrap().to_key_file_json();
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602, 0o666] {
            let path = key_file(&dir, json.as_bytes(), mode);
            let err = NodeKey::load(&path).unwrap_err();
            assert!(
                matches!(err, KeyFileError::Permissions { mode: m, .. } if m == mode),
                "{mode:o}: {err}"
            );
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("chmod 600 {}", path.display())),
                "{msg}"
            );
            // load_or_generate reports it too instead of replacing the key.
            assert!(matches!(
                NodeKey::load_or_generate(&path),
                Err(KeyFileError::Permissions { .. })
            ));
        }
        // Owner-only modes are accepted.
        for mode in [0o600, 0o400] {
            let path = key_file(&dir, json.as_bytes(), mode);
            assert!(NodeKey::load(&path).is_ok(), "{mode:o}");
        }
    }

    #[test]
    fn missing_file_is_a_read_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.json");
        let err = NodeKey::load(&path).unwrap_err();
        let KeyFileError::Read { source, .. } = &err else {
            panic!("expected a read error, got {err:?}");
        };
        assert_eq!(source.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("absent.json"), "{err}");
    }

    #[test]
    fn directory_is_a_read_error_not_a_permission_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = NodeKey::load(dir.path()).unwrap_err();
        assert!(matches!(err, KeyFileError::Read { .. }), "{err}");
        assert!(matches!(
            NodeKey::load_or_generate(dir.path()),
            Err(KeyFileError::Read { .. })
        ));
    }

    /// Runs `load` on another thread and waits for it, so a load that blocks fails the test
    /// instead of hanging it.
    #[cfg(unix)]
    fn load_within_30s(path: &Path) -> Result<NodeKey, KeyFileError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let path = path.to_owned();
        std::thread::spawn(move || {
            let _ = tx.send(NodeKey::load(&path));
        });
        rx.recv_timeout(std::time::Duration::from_secs(30))
            .expect("NodeKey::load blocked")
    }

    #[test]
    fn key_file_over_the_limit_is_too_large_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        // A valid key padded with whitespace (which JSON allows) to one byte past the limit:
        // refused for its size, before parsing.
        let mut contents = NodeKey::from_seed([7; 32])
            .unwrap()
            .to_key_file_json()
            .into_bytes();
        contents.resize(usize::try_from(MAX_KEY_FILE_LEN).unwrap() + 1, b' ');
        let path = key_file(&dir, &contents, 0o600);
        let err = NodeKey::load(&path).unwrap_err();
        assert!(
            matches!(&err, KeyFileError::TooLarge { path: p, limit } if *p == path && *limit == MAX_KEY_FILE_LEN),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("node_key.json") && msg.contains(&MAX_KEY_FILE_LEN.to_string()),
            "{msg}"
        );
        // load_or_generate reports it and leaves the file alone.
        assert!(matches!(
            NodeKey::load_or_generate(&path),
            Err(KeyFileError::TooLarge { .. })
        ));
        assert_eq!(fs::read(&path).unwrap(), contents);
    }

    #[test]
    fn key_file_of_exactly_the_limit_is_parsed() {
        let dir = tempfile::tempdir().unwrap();
        let limit = usize::try_from(MAX_KEY_FILE_LEN).unwrap();
        // Garbage of exactly the limit gets past the size check to the parser.
        let err = format_error(&vec![b'x'; limit]);
        assert!(matches!(err, KeyFormatError::Json(_)), "{err}");
        // A valid key padded to exactly the limit loads.
        let key = NodeKey::from_seed([7; 32]).unwrap();
        let mut contents = key.to_key_file_json().into_bytes();
        contents.resize(limit, b'\n');
        let path = key_file(&dir, &contents, 0o600);
        assert_eq!(NodeKey::load(&path).unwrap().id(), key.id());
    }

    #[cfg(unix)]
    #[test]
    fn symlink_to_dev_zero_is_refused_without_reading_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node_key.json");
        std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
        let err = load_within_30s(&path).unwrap_err();
        assert!(
            matches!(&err, KeyFileError::Read { source, .. } if source.kind() == io::ErrorKind::InvalidInput),
            "{err:?}"
        );
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn fifo_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node_key.json");
        let made = std::process::Command::new("mkfifo")
            .args(["-m", "600"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success());
        let err = load_within_30s(&path).unwrap_err();
        assert!(
            matches!(&err, KeyFileError::Read { source, .. } if source.kind() == io::ErrorKind::InvalidInput),
            "{err:?}"
        );
        // Not replaced by load_or_generate either.
        assert!(matches!(
            NodeKey::load_or_generate(&path),
            Err(KeyFileError::Read { .. })
        ));
    }

    #[test]
    fn corrupt_file_is_not_replaced_by_load_or_generate() {
        let dir = tempfile::tempdir().unwrap();
        let path = key_file(&dir, b"{\"priv_key\":", 0o600);
        let err = NodeKey::load_or_generate(&path).unwrap_err();
        assert!(matches!(err, KeyFileError::Format { .. }), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"{\"priv_key\":");
    }

    #[test]
    fn save_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/secrets/node_key.json");
        let key = NodeKey::generate().unwrap();
        key.save(&path).unwrap();
        let loaded = NodeKey::load(&path).unwrap();
        assert_eq!(loaded.id(), key.id());
        assert_eq!(loaded.seed(), key.seed());
        // Only the key file is left in the directory: no temporary file.
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("node_key.json")]);
    }

    #[test]
    fn save_replaces_an_existing_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node_key.json");
        NodeKey::from_seed([1; 32]).unwrap().save(&path).unwrap();
        let second = NodeKey::from_seed([2; 32]).unwrap();
        second.save(&path).unwrap();
        assert_eq!(NodeKey::load(&path).unwrap().id(), second.id());
    }

    #[cfg(unix)]
    #[test]
    fn saved_file_has_mode_0600_and_new_dirs_0700() {
        use std::os::unix::fs::PermissionsExt;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets/node_key.json");
        NodeKey::generate().unwrap().save(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
    }

    #[test]
    fn file_is_exactly_tm2s_json_shape_of_seed_then_public_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node_key.json");
        let key = NodeKey::from_seed([0x42; 32]).unwrap();
        key.save(&path).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let b64 = text
            .strip_prefix(r#"{"priv_key":""#)
            .and_then(|rest| rest.strip_suffix(r#""}"#))
            .unwrap_or_else(|| panic!("unexpected shape: {text}"));
        let bytes = BASE64.decode(b64).unwrap();
        assert_eq!(bytes.len(), KEYPAIR_LEN);
        assert_eq!(bytes[..SEED_LEN], [0x42; 32]);
        assert_eq!(bytes[SEED_LEN..], key.public_key());
    }

    #[cfg(unix)]
    #[test]
    fn load_or_generate_creates_once_then_loads_without_rewriting() {
        use std::os::unix::fs::MetadataExt;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets/node_key.json");
        let first = NodeKey::load_or_generate(&path).unwrap();
        let before = fs::metadata(&path).unwrap();
        let contents = fs::read(&path).unwrap();
        let second = NodeKey::load_or_generate(&path).unwrap();
        let after = fs::metadata(&path).unwrap();
        assert_eq!(first.id(), second.id());
        assert_eq!(fs::read(&path).unwrap(), contents);
        assert_eq!(
            (before.ino(), before.mtime_nsec()),
            (after.ino(), after.mtime_nsec())
        );
        assert_eq!(before.mode() & 0o777, 0o600);
        // The temporary file used to publish the key is gone.
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn save_new_never_replaces_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node_key.json");
        let existing = NodeKey::from_seed([1; 32]).unwrap();
        existing.save(&path).unwrap();
        assert!(
            !NodeKey::from_seed([2; 32])
                .unwrap()
                .save_new(&path)
                .unwrap()
        );
        assert_eq!(NodeKey::load(&path).unwrap().id(), existing.id());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn node_id_vectors_survive_a_saved_and_loaded_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node_key.json");
        let csv = include_str!("../tests/data/tm2_node_ids.csv");
        let mut seen = 0;
        for line in csv.lines().filter(|l| !l.trim().is_empty()) {
            let cols: Vec<&str> = line.split(',').map(str::trim).collect();
            let seed: [u8; 32] = hex::decode(cols[0]).unwrap().try_into().unwrap();
            NodeKey::from_seed(seed).unwrap().save(&path).unwrap();
            let key = NodeKey::load(&path).unwrap();
            assert_eq!(hex::encode(key.public_key()), cols[1]);
            assert_eq!(key.id().to_string(), cols[2]);
            seen += 1;
        }
        assert!(seen > 0, "no vectors");
    }

    #[test]
    fn reproduces_tm2_node_id_vectors() {
        let csv = include_str!("../tests/data/tm2_node_ids.csv");
        for line in csv.lines().filter(|l| !l.trim().is_empty()) {
            let cols: Vec<&str> = line.split(',').map(str::trim).collect();
            let seed: [u8; 32] = hex::decode(cols[0]).unwrap().try_into().unwrap();
            let key = NodeKey::from_seed(seed).unwrap();
            assert_eq!(hex::encode(key.public_key()), cols[1]);
            assert_eq!(key.id().to_string(), cols[2]);
        }
    }

    #[test]
    fn signatures_verify_only_with_the_right_key_and_message() {
        let a = NodeKey::generate().unwrap();
        let b = NodeKey::generate().unwrap();
        let sig = a.sign(b"challenge");
        assert!(verify(&a.public_key(), b"challenge", &sig));
        assert!(!verify(&b.public_key(), b"challenge", &sig));
        assert!(!verify(&a.public_key(), b"challengf", &sig));
        assert!(!verify(&a.public_key(), b"challenge", &sig[..63]));
    }

    #[test]
    fn debug_does_not_leak_the_seed() {
        let key = NodeKey::from_seed([0xab; 32]).unwrap();
        let dbg = format!("{key:?}");
        assert!(!dbg.contains("ab, ab") && !dbg.contains("abab"), "{dbg}");
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_into_the_key_file_decoder_never_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)
        ) {
            let _ = NodeKey::from_key_file_json(&bytes);
            let _ = NodeKey::from_keypair_bytes(&bytes);
        }

        #[test]
        fn key_file_json_round_trips(seed in proptest::prelude::any::<[u8; 32]>()) {
            let key = NodeKey::from_seed(seed).unwrap();
            let back = NodeKey::from_key_file_json(key.to_key_file_json().as_bytes()).unwrap();
            proptest::prop_assert_eq!(back.id(), key.id());
            proptest::prop_assert_eq!(back.seed(), key.seed());
        }
    }
}
