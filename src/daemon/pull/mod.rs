//! Images from an OCI registry (`faas new NAME --image REF`): oci-client fetches the
//! manifest (an index resolved to this machine's platform, linux/amd64 here) and the config,
//! checking their digests, then the layers are streamed, each checked against its digest
//! as it arrives, as a classic `docker save` archive into the same installer an upload goes
//! through (which checks every digest once more, and applies its size limits and quota).
//! Plain HTTP only for the registries named by `--insecure-registry`.

mod archive;
mod auth;

use std::path::Path;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::{Client, Reference};

pub use archive::archive;
pub use auth::{AuthFileError, Credentials};

/// Largest config document accepted (the installer's bound on a document).
const MAX_CONFIG: i64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("invalid image reference {reference:?}: {source}")]
    Reference {
        reference: String,
        #[source]
        source: oci_client::ParseError,
    },
    #[error("the registry {registry} has no image {reference} ({why})")]
    NotFound {
        registry: String,
        reference: String,
        why: String,
    },
    #[error("the registry {registry} refused access to {reference} (credentials come from --registry-auth): {why}")]
    Denied {
        registry: String,
        reference: String,
        why: String,
    },
    #[error("fetching the manifest of {reference} failed: {source}")]
    Manifest {
        reference: String,
        #[source]
        source: OciDistributionError,
    },
    #[error("the manifest of {reference} is invalid: {why}")]
    BadManifest { reference: String, why: String },
    #[error("{reference} is {size} bytes, more than the {limit} bytes allowed for one image")]
    TooLarge {
        reference: String,
        size: u64,
        limit: u64,
    },
    #[error("fetching the config of {reference} failed: {source}")]
    Config {
        reference: String,
        #[source]
        source: OciDistributionError,
    },
}

/// How the daemon reaches registries: credentials and the registries allowed plain HTTP.
pub struct Registries {
    credentials: Credentials,
    insecure: Vec<String>,
}

impl Registries {
    pub fn new(auth_file: Option<&Path>, insecure: &[String]) -> Result<Self, AuthFileError> {
        Ok(Registries {
            credentials: match auth_file {
                Some(path) => Credentials::load(path)?,
                None => Credentials::default(),
            },
            insecure: insecure.to_vec(),
        })
    }

    fn client(&self) -> Client {
        // reqwest's rustls wants a process-wide crypto provider; ring is the one already
        // in the tree (ureq). Installing it a second time is refused, harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(self.insecure.clone()),
            ..Default::default()
        })
    }

    /// Fetches and checks the manifest and config of `reference`, whose layers together may
    /// be at most `max_bytes`.
    pub async fn resolve(&self, reference: &str, max_bytes: u64) -> Result<Resolved, PullError> {
        let (client, parsed, manifest, digest) = self.manifest(reference).await?;
        let size = checked_size(reference, &manifest, max_bytes)?;
        let mut config = Vec::new();
        client
            .pull_blob(&parsed, &manifest.config, &mut config)
            .await
            .map_err(|source| PullError::Config {
                reference: reference.to_string(),
                source,
            })?;
        tracing::info!(image = %reference, %digest, layers = manifest.layers.len(), size, "manifest and config fetched");
        Ok(Resolved {
            client,
            reference: parsed,
            layers: manifest.layers,
            config_digest: manifest.config.digest,
            config,
            size,
        })
    }

    /// The image id `reference` names now (its config's digest, as the installer computes
    /// it from the config blob), from the manifest alone.
    pub async fn config_digest(&self, reference: &str) -> Result<String, PullError> {
        let (_, _, manifest, digest) = self.manifest(reference).await?;
        tracing::info!(image = %reference, %digest, config = %manifest.config.digest, "manifest fetched");
        Ok(manifest.config.digest)
    }

    /// The manifest of `reference` (an index resolved to this platform) and its digest, and
    /// the client and parsed reference that fetched it.
    async fn manifest(
        &self,
        reference: &str,
    ) -> Result<(Client, Reference, OciImageManifest, String), PullError> {
        let parsed: Reference = reference.parse().map_err(|source| PullError::Reference {
            reference: reference.to_string(),
            source,
        })?;
        let registry = parsed.resolve_registry().to_string();
        let auth = self.credentials.for_registry(&registry);
        let client = self.client();
        let (manifest, digest) = client
            .pull_image_manifest(&parsed, &auth)
            .await
            .map_err(|e| manifest_error(&registry, reference, e))?;
        Ok((client, parsed, manifest, digest))
    }
}

/// An image whose manifest and config are fetched and checked; its layers not yet.
pub struct Resolved {
    client: Client,
    reference: Reference,
    layers: Vec<OciDescriptor>,
    config_digest: String,
    config: Vec<u8>,
    /// Config and layers, as the manifest gives them.
    pub size: u64,
}

/// The sum of the config and layer sizes, checked against `max_bytes` and the manifest's
/// own sanity (no negative size, a config of document size).
fn checked_size(
    reference: &str,
    manifest: &OciImageManifest,
    max_bytes: u64,
) -> Result<u64, PullError> {
    let bad = |why: String| PullError::BadManifest {
        reference: reference.to_string(),
        why,
    };
    if !(0..=MAX_CONFIG).contains(&manifest.config.size) {
        return Err(bad(format!(
            "a config of {} bytes (at most {MAX_CONFIG})",
            manifest.config.size
        )));
    }
    let mut size = manifest.config.size as u64;
    for l in &manifest.layers {
        let n = u64::try_from(l.size)
            .map_err(|_| bad(format!("layer {} has size {}", l.digest, l.size)))?;
        size = size.saturating_add(n);
    }
    if size > max_bytes {
        return Err(PullError::TooLarge {
            reference: reference.to_string(),
            size,
            limit: max_bytes,
        });
    }
    Ok(size)
}

/// Unknown tags and repositories, and refused credentials, named as such.
fn manifest_error(registry: &str, reference: &str, e: OciDistributionError) -> PullError {
    let codes: Vec<&OciErrorCode> = match &e {
        OciDistributionError::RegistryError { envelope, .. } => {
            envelope.errors.iter().map(|err| &err.code).collect()
        }
        _ => vec![],
    };
    let (registry, reference, why) = (registry.to_string(), reference.to_string(), e.to_string());
    let any = |wanted: &[OciErrorCode]| codes.iter().any(|c| wanted.contains(c));
    match &e {
        _ if any(&[
            OciErrorCode::ManifestUnknown,
            OciErrorCode::NameUnknown,
            OciErrorCode::NotFound,
        ]) =>
        {
            PullError::NotFound {
                registry,
                reference,
                why,
            }
        }
        OciDistributionError::ImageManifestNotFoundError(_) => PullError::NotFound {
            registry,
            reference,
            why,
        },
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::UnauthorizedError { .. } => PullError::Denied {
            registry,
            reference,
            why,
        },
        _ if any(&[OciErrorCode::Unauthorized, OciErrorCode::Denied]) => PullError::Denied {
            registry,
            reference,
            why,
        },
        _ => PullError::Manifest {
            reference,
            source: e,
        },
    }
}
