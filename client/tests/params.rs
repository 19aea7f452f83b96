//! Typed `GetParams` and `SampleScores` against a real param-server.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use common::*;
use posterior_client::{Client, ClientError, Model, Precision};
use posterior_learner::params::params_to_wire;
use tonic::Code;

#[tokio::test]
async fn get_params_returns_the_stored_values_typed() {
    let server = ParamServer::any_port(64);
    server.store.apply("ctr", 5, beta_state(3)).unwrap();
    server
        .store
        .apply("dwell", 9, diagonal_state(2, 4))
        .unwrap();
    let client = Client::connect(server.endpoint(), fast_config())
        .await
        .unwrap();

    let params = client.get_params("ctr", &[7, 5]).await.unwrap();
    assert_eq!(params.len(), 2);
    assert_eq!((params[0].doc_id, params[0].is_prior), (7, true));
    assert_eq!(
        params[0].model,
        Model::Beta {
            alpha: 1.0,
            beta: 1.0
        }
    );
    let five = &params[1];
    assert_eq!(
        (five.doc_id, five.seq, five.sample_count, five.is_prior),
        (5, 3, 3.0, false)
    );
    assert_eq!(five.updated_event_time_ms, 3);
    assert_eq!(
        five.model,
        Model::Beta {
            alpha: 4.0,
            beta: 7.0
        }
    );
    // Exactly what the store holds, through the learner's own state.
    assert_eq!(five.to_key_state().unwrap(), beta_state(3));

    let params = client.get_params("dwell", &[9]).await.unwrap();
    let Model::Gaussian {
        mean,
        variance,
        precision,
    } = &params[0].model
    else {
        panic!("dwell is logistic: {:?}", params[0].model)
    };
    assert_eq!(mean, &[2.0; 4]);
    assert_eq!(variance, &[1.0 / 3.0; 4]);
    assert_eq!(precision, &Precision::Diagonal(vec![3.0; 4]));
    assert_eq!(params[0].to_key_state().unwrap(), diagonal_state(2, 4));
    let wire = params_to_wire("dwell", 9, &diagonal_state(2, 4));
    assert_eq!(params[0], posterior_client::Params::try_from(wire).unwrap());
}

#[tokio::test]
async fn sample_scores_are_typed_and_reproducible() {
    let server = ParamServer::any_port(64);
    server.store.apply("ctr", 1, beta_state(30)).unwrap();
    server
        .store
        .apply("dwell", 2, diagonal_state(1, 4))
        .unwrap();
    let client = Client::connect(server.endpoint(), fast_config())
        .await
        .unwrap();

    let a = client
        .sample_scores("ctr", &[1, 1, 2], None, Some(7))
        .await
        .unwrap();
    let b = client
        .sample_scores("ctr", &[1, 1, 2], None, Some(7))
        .await
        .unwrap();
    assert_eq!(a, b);
    assert_eq!(a.mean, [31.0 / 92.0, 31.0 / 92.0, 0.5]);
    assert!(a.sampled.iter().all(|s| (0.0..=1.0).contains(s)));
    assert_ne!(a.sampled[0], a.sampled[1], "independent draws per entry");

    // One context shared by both docs: doc 2 has mean weights 1, so its
    // mean score is sigmoid(sum(x)); doc 3 is unseen and scores 0.5.
    let x = [0.5_f32, -0.25, 0.0, 0.25];
    let scores = client
        .sample_scores("dwell", &[2, 3], Some(&x), Some(1))
        .await
        .unwrap();
    let z: f64 = x.iter().map(|&v| f64::from(v)).sum();
    assert!((scores.mean[0] - 1.0 / (1.0 + (-z).exp())).abs() < 1e-12);
    assert_eq!(scores.mean[1], 0.5);

    let err = client
        .sample_scores("dwell", &[2], Some(&[1.0]), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    let err = client
        .sample_scores("dwell", &[2], Some(&[f32::NAN; 4]), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::InvalidArgument(_)), "{err}");
}

#[tokio::test]
async fn an_unknown_version_is_not_found_after_one_attempt() {
    let server = ParamServer::any_port(64);
    let client = Client::connect(server.endpoint(), fast_config())
        .await
        .unwrap();
    let err = client.get_params("nope", &[1]).await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Status {
                code: Code::NotFound,
                attempts: 1,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn connecting_to_nothing_fails_with_unavailable() {
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", unused.local_addr().unwrap());
    drop(unused);
    let err = Client::connect(endpoint, fast_config()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_client_waits_out_a_server_that_starts_late() {
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = unused.local_addr().unwrap();
    drop(unused);
    let mut config = fast_config();
    config.retry.max_attempts = 50;
    config.retry.max_elapsed_ms = 20_000;
    let client = Client::connect_lazy(format!("http://{addr}"), config).unwrap();
    let early = tokio::spawn(async move { client.get_params("ctr", &[1]).await });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let server = ParamServer::start(
        ParamServer::store(16),
        posterior_param_server::Limits::default(),
        addr,
    );
    let params = early.await.unwrap().unwrap();
    assert!(params[0].is_prior);
    drop(server);
}

/// The client advertises `MAX_FRAME_BYTES` in its HTTP/2 SETTINGS, so a
/// server sends a large response in few DATA frames. Read off the wire: a
/// bare TCP listener takes the connection preface and the first frame.
#[tokio::test]
async fn the_client_advertises_large_http2_frames() {
    use tokio::io::AsyncReadExt;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    // Never answered: the client only has to send its side of the handshake.
    let connecting = tokio::spawn(Client::connect(endpoint, fast_config()));
    let (mut socket, _) = listener.accept().await.unwrap();
    let mut preface = [0_u8; 24];
    socket.read_exact(&mut preface).await.unwrap();
    assert_eq!(&preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    let mut header = [0_u8; 9];
    socket.read_exact(&mut header).await.unwrap();
    let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    assert_eq!(header[3], 0x4, "the first frame is SETTINGS");
    let mut payload = vec![0_u8; length];
    socket.read_exact(&mut payload).await.unwrap();
    let settings: Vec<(u16, u32)> = payload
        .chunks_exact(6)
        .map(|s| {
            (
                u16::from_be_bytes([s[0], s[1]]),
                u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
            )
        })
        .collect();
    const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
    assert!(
        settings.contains(&(SETTINGS_MAX_FRAME_SIZE, posterior_client::MAX_FRAME_BYTES)),
        "SETTINGS {settings:?} lack MAX_FRAME_SIZE = {}",
        posterior_client::MAX_FRAME_BYTES
    );
    connecting.abort();
}
