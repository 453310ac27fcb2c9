//! The blobstore against a real S3-compatible server (moto, `pip install 'moto[server]'`,
//! which `.ci/run` installs): content-addressed writes, verified reads, digest mismatches
//! refused without a trace, listing, deletion, and presigned URLs an agent can fetch without
//! the director.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use director::blobstore::{BlobId, Blobstore, BlobstoreConfig, BlobstoreError};

struct Moto {
    child: Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts moto on a free port; fails (never skips) when it is not installed.
async fn moto() -> Moto {
    let port = free_port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server is not installed: pip install 'moto[server]' (.ci/run does)");
    let endpoint = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let started = Instant::now();
    while client.get(&endpoint).send().await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "moto did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let created = client
        .put(format!("{endpoint}/director-blobs"))
        .send()
        .await
        .unwrap();
    assert!(
        created.status().is_success(),
        "creating the bucket: {}",
        created.status()
    );
    Moto { child, endpoint }
}

fn config(endpoint: &str) -> BlobstoreConfig {
    BlobstoreConfig::S3 {
        bucket: "director-blobs".to_string(),
        endpoint: Some(endpoint.to_string()),
        region: "us-east-1".to_string(),
        access_key_id: secrets::Redacted("test".to_string()),
        secret_access_key: secrets::Redacted("test".to_string()),
        path_style: true,
    }
}

#[tokio::test]
async fn the_blobstore_works_on_s3() {
    let moto = moto().await;
    let store = Blobstore::open(&config(&moto.endpoint), b"key".to_vec()).unwrap();
    assert_eq!(store.location(), "s3://director-blobs");

    let content = vec![7u8; 3 << 20];
    let stored = store.put_reader(&content[..], None, None).await.unwrap();
    assert!(stored.created);
    assert_eq!(store.get_bytes(&stored.id).await.unwrap(), content);
    let again = store.put_reader(&content[..], None, None).await.unwrap();
    assert!(!again.created, "the same content is stored once");

    let wrong = BlobId::parse(&"0".repeat(64)).unwrap();
    let error = store
        .put_reader(&b"other"[..], Some(&wrong), None)
        .await
        .unwrap_err();
    assert!(
        matches!(error, BlobstoreError::DigestMismatch { .. }),
        "{error}"
    );
    assert_eq!(
        store.list().await.unwrap(),
        vec![stored.id.clone()],
        "a refused write leaves nothing"
    );
    assert_eq!(store.clean_staging().await.unwrap(), 0);

    // Agents fetch from S3 directly with a presigned URL.
    let url = store
        .presigned_url(&stored.id, Duration::from_secs(60))
        .await
        .unwrap()
        .expect("S3 presigns");
    let fetched = reqwest::get(&url).await.unwrap();
    assert!(fetched.status().is_success(), "{}", fetched.status());
    assert_eq!(fetched.bytes().await.unwrap().len(), content.len());

    store.delete(&stored.id).await.unwrap();
    assert!(store.list().await.unwrap().is_empty());
    assert!(matches!(
        store.get_bytes(&stored.id).await.unwrap_err(),
        BlobstoreError::NotFound(_)
    ));
}
