//! A client of the dataplane's control socket: connects, says hello, then one request and one
//! response at a time.

use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::path::Path;

use podlane_core::api::{self, PROTOCOL_VERSION, Request, Response};

/// How long one request may wait for the dataplane (a full sync of thousands of nodes takes
/// well under a second).
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The default socket path (the dataplane's `--control-socket` default).
pub const DEFAULT_SOCKET: &str = "/run/podlane/dataplane.sock";

#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    /// The dataplane's node and generation at connection time.
    pub node: String,
    pub generation: u64,
}

impl Client {
    /// Connects and completes the handshake; a version mismatch is an error saying both.
    pub fn connect(path: &Path, name: &str) -> anyhow::Result<Client> {
        let stream = UnixStream::connect(path).map_err(|e| {
            anyhow::anyhow!(
                "cannot connect to the dataplane at {}: {e} (is podlane-dataplane running? see --socket)",
                path.display()
            )
        })?;
        // A dataplane that stops answering (stopped, stuck) must not hang the agent or a
        // command: every read and write gives up after this long.
        stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
        stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
        let reader = BufReader::new(stream.try_clone()?);
        let mut client = Client { stream, reader, node: String::new(), generation: 0 };
        // A dataplane that refuses the connection (too many clients, no access) says why and
        // closes, maybe before the hello is written: its answer is read whether or not the
        // write went through.
        let hello = Request::Hello { version: PROTOCOL_VERSION, client: name.to_owned() };
        let written = api::write_frame(&client.stream, &hello);
        let answer = match (api::read_frame(&mut client.reader), written) {
            (Ok(answer), _) => answer,
            (Err(_), Err(e)) => return Err(e.into()),
            (Err(e), Ok(())) => return Err(e.into()),
        };
        match answer {
            Response::Welcome { version, node, generation } if version == PROTOCOL_VERSION => {
                client.node = node;
                client.generation = generation;
                Ok(client)
            }
            Response::Welcome { version, .. } => anyhow::bail!(
                "the dataplane speaks protocol version {version}, this podlane speaks {PROTOCOL_VERSION}"
            ),
            Response::Error(e) => anyhow::bail!("the dataplane refused the connection: {e}"),
            other => anyhow::bail!("unexpected handshake reply: {other:?}"),
        }
    }

    /// Sends one request and waits for its response.
    pub fn request(&mut self, request: &Request) -> anyhow::Result<Response> {
        api::write_frame(&self.stream, request)?;
        Ok(api::read_frame(&mut self.reader)?)
    }
}
