//! Every request's plugin data in one call, decoded as it arrives.
//!
//! `GetPluginData` without a resource name answers with the data of every request of the kind in
//! a single protobuf message: tens of megabytes on a cluster with 100,000 requests. tonic would
//! hold all of it (and its decoded form) before the first record could be looked at, so this call
//! speaks gRPC over the channel itself and decodes the records one by one from the bytes as they
//! come: memory stays at one record and one HTTP/2 frame, whatever the size of the cluster.

use std::time::Duration;

use http_body_util::BodyExt as _;
use prost::Message as _;
use prost::bytes::{Buf, BufMut, Bytes, BytesMut};
use tonic::Status;
use tower::ServiceExt as _;

use super::client::{ACCESS_REQUEST_KIND, CALL_TIMEOUT, PluginData, TeleportClient};
use super::error::TeleportError;
use super::pb::types::{PluginDataFilter, PluginDataV3};

const PATH: &str = "/proto.AuthService/GetPluginData";
/// The largest record we accept: Teleport refuses to store one over 1,000,000 bytes
/// (`MaxResourceSize`); the margin is for the envelope.
const MAX_RECORD: usize = 2 * 1024 * 1024;
/// `PluginDataSeq.plugin_data` (field 1, length-delimited).
const SEQ_FIELD: u64 = 1;

impl TeleportClient {
    /// Every request's data of `plugin`, handed to `each` as `(request id, data)` one at a time.
    /// Returns how many records were read. Teleport answers only once it has read every record,
    /// so the answer may take up to [`HEADERS_TIMEOUT`] to start; then a server silent for
    /// [`CALL_TIMEOUT`], or an answer not over within [`SCAN_TIMEOUT`], counts as gone
    /// ([`TeleportError::Timeout`]). Success needs `grpc-status: 0` after exactly one message.
    pub async fn scan_plugin_data(
        &self,
        plugin: &str,
        each: &mut (dyn FnMut(&str, PluginData) + Send + '_),
    ) -> Result<usize, TeleportError> {
        let over = tokio::time::Instant::now() + SCAN_TIMEOUT;
        let filter = PluginDataFilter {
            kind: ACCESS_REQUEST_KIND.into(),
            resource: String::new(),
            plugin: plugin.into(),
        };
        let response = timed(
            HEADERS_TIMEOUT,
            over,
            self.channel().oneshot(request(&filter)),
        )
        .await?
        .map_err(|e| TeleportError::Unavailable(format!("GetPluginData: {e}")))?;
        let mut status = StatusSeen::default();
        status.check(response.headers())?;
        if response.status() != http::StatusCode::OK {
            return Err(TeleportError::Unavailable(format!(
                "GetPluginData: HTTP {} instead of a gRPC answer",
                response.status()
            )));
        }
        let mut body = response.into_body();
        let mut reader = Reader::default();
        let mut count = 0;
        while let Some(frame) = timed(CALL_TIMEOUT, over, body.frame()).await? {
            let frame = frame.map_err(TeleportError::from)?;
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    status.check(&frame.into_trailers().unwrap_or_default())?;
                    continue;
                }
            };
            for record in reader.feed(data)? {
                if let Some((id, data)) = entry(record, plugin) {
                    each(&id, data);
                }
                count += 1;
            }
        }
        if !status.ok {
            // hyper ends a reset stream like a finished one: only the status says it finished.
            return Err(bad("the answer ended without a gRPC status"));
        }
        reader.finish()?;
        Ok(count)
    }
}

/// How long Teleport may take to start its answer (it reads and encodes every record first).
pub const HEADERS_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the whole answer may take.
pub const SCAN_TIMEOUT: Duration = Duration::from_secs(300);

/// Whether the answer's `grpc-status` (in its headers or its trailers) said OK.
#[derive(Default)]
struct StatusSeen {
    ok: bool,
}

impl StatusSeen {
    /// A header block's status: an error ends the call; OK is remembered.
    fn check(&mut self, headers: &http::HeaderMap) -> Result<(), TeleportError> {
        match Status::from_header_map(headers) {
            Some(s) if s.code() == tonic::Code::Ok => self.ok = true,
            Some(s) => return Err(s.into()),
            None => {}
        }
        Ok(())
    }
}

/// `future`, unless Teleport stays silent for `idle` or the call runs past `over`.
async fn timed<T>(
    idle: Duration,
    over: tokio::time::Instant,
    future: impl Future<Output = T>,
) -> Result<T, TeleportError> {
    let until = over.min(tokio::time::Instant::now() + idle);
    tokio::time::timeout_at(until, future).await.map_err(|_| {
        TeleportError::Timeout(match tokio::time::Instant::now() >= over {
            true => format!(
                "GetPluginData: the answer was not over within {}s",
                SCAN_TIMEOUT.as_secs()
            ),
            false => format!(
                "GetPluginData: no answer from Teleport within {}s",
                idle.as_secs()
            ),
        })
    })
}

fn request(filter: &PluginDataFilter) -> http::Request<tonic::body::Body> {
    let message = filter.encode_to_vec();
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0);
    framed.put_u32(message.len() as u32);
    framed.put_slice(&message);
    let body = http_body_util::Full::new(framed.freeze());
    let mut request = http::Request::new(tonic::body::Body::new(body));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = http::Uri::from_static(PATH);
    let headers = request.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    request
}

/// The data of `plugin` in one record, with the request it belongs to.
fn entry(record: PluginDataV3, plugin: &str) -> Option<(String, PluginData)> {
    let id = record.metadata?.name;
    let data = record.spec?.entries.remove(plugin)?.data;
    Some((id, data.into_iter().collect()))
}

/// Turns the bytes of one gRPC message holding a `PluginDataSeq` into its records, as the bytes
/// arrive. Holds at most one record that is not yet complete.
#[derive(Default)]
struct Reader {
    pending: BytesMut,
    /// Bytes of the message not yet seen; `None` until its 5-byte prefix has been read.
    message_left: Option<usize>,
    /// A message was read whole: anything after it is an error.
    done: bool,
}

impl Reader {
    fn feed(&mut self, data: Bytes) -> Result<Vec<PluginDataV3>, TeleportError> {
        self.pending.extend_from_slice(&data);
        let mut out = Vec::new();
        loop {
            let Some(left) = self.message_left else {
                if self.pending.len() < 5 {
                    return Ok(out);
                }
                if self.done {
                    return Err(bad("more than one message in a unary answer"));
                }
                if self.pending[0] != 0 {
                    return Err(bad("a compressed message, which was not asked for"));
                }
                self.pending.advance(1);
                self.message_left = Some(self.pending.get_u32() as usize);
                continue;
            };
            if left == 0 {
                self.message_left = None;
                self.done = true;
                continue;
            }
            let Some((field, header, len)) = field_header(&self.pending)? else {
                return Ok(out);
            };
            if len > MAX_RECORD {
                return Err(bad("a record over 2 MiB"));
            }
            if header + len > left {
                return Err(bad("a field runs past the end of the message"));
            }
            if self.pending.len() < header + len {
                return Ok(out);
            }
            let mut field_bytes = self.pending.split_to(header + len);
            field_bytes.advance(header);
            self.message_left = Some(left - header - len);
            // Fields other than the records (none today) are skipped.
            if field == SEQ_FIELD {
                let record = PluginDataV3::decode(field_bytes.freeze())
                    .map_err(|e| bad(&format!("a record that does not decode: {e}")))?;
                out.push(record);
            }
        }
    }

    /// The answer ended: it must have held exactly one whole message.
    fn finish(&self) -> Result<(), TeleportError> {
        match (self.done, self.message_left, self.pending.is_empty()) {
            (true, None, true) => Ok(()),
            (false, None, true) => Err(bad("no message in the answer")),
            _ => Err(bad("the answer ended in the middle of a message")),
        }
    }
}

/// Field number, header length and payload length of the field at the start of `buf` (a
/// length-delimited one; any other wire type is an error here, since `PluginDataSeq` has none).
/// `None`: not enough bytes yet.
fn field_header(buf: &[u8]) -> Result<Option<(u64, usize, usize)>, TeleportError> {
    let Some((tag, tag_len)) = varint(buf)? else {
        return Ok(None);
    };
    if tag & 7 != 2 {
        return Err(bad("a field that is not length-delimited"));
    }
    let Some((len, len_len)) = varint(&buf[tag_len..])? else {
        return Ok(None);
    };
    let len = usize::try_from(len).map_err(|_| bad("a field length out of range"))?;
    Ok(Some((tag >> 3, tag_len + len_len, len)))
}

fn varint(buf: &[u8]) -> Result<Option<(u64, usize)>, TeleportError> {
    let mut value = 0u64;
    for (i, byte) in buf.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 10 {
        return Err(bad("a varint over 10 bytes"));
    }
    Ok(None)
}

fn bad(what: &str) -> TeleportError {
    TeleportError::Unavailable(format!("GetPluginData: malformed answer: {what}"))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::teleport::pb::proto::PluginDataSeq;
    use crate::teleport::pb::types::{Metadata, PluginDataEntry, PluginDataSpecV3};

    fn record(id: &str, reason: &str) -> PluginDataV3 {
        let data = HashMap::from([("request_reason".to_owned(), reason.to_owned())]);
        PluginDataV3 {
            kind: "plugin_data".into(),
            sub_kind: "access_request".into(),
            version: "v3".into(),
            metadata: Some(Metadata {
                name: id.into(),
                ..Default::default()
            }),
            spec: Some(PluginDataSpecV3 {
                entries: HashMap::from([
                    ("email".to_owned(), PluginDataEntry { data }),
                    ("slack".to_owned(), PluginDataEntry::default()),
                ]),
            }),
        }
    }

    fn framed(message: &[u8], flag: u8) -> Vec<u8> {
        let mut out = vec![flag];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    fn answer(n: usize) -> Vec<u8> {
        let seq = PluginDataSeq {
            plugin_data: (0..n)
                .map(|i| record(&format!("r{i}"), &"x".repeat(i * 50)))
                .collect(),
        };
        framed(&seq.encode_to_vec(), 0)
    }

    /// Feeds `bytes` in chunks of `size`; the records read, or the first error.
    fn read(bytes: &[u8], size: usize) -> Result<Vec<(String, PluginData)>, TeleportError> {
        let mut reader = Reader::default();
        let mut out = Vec::new();
        for chunk in bytes.chunks(size) {
            let records = reader.feed(Bytes::copy_from_slice(chunk))?;
            out.extend(records.into_iter().filter_map(|r| entry(r, "email")));
        }
        reader.finish()?;
        Ok(out)
    }

    #[test]
    fn records_come_out_whole_however_the_bytes_are_cut() {
        let bytes = answer(40);
        for size in [1, 2, 3, 5, 7, 64, 1000, bytes.len()] {
            let got = read(&bytes, size).unwrap();
            assert_eq!(got.len(), 40, "chunks of {size}");
            assert_eq!(got[39].0, "r39");
            assert_eq!(got[39].1["request_reason"], "x".repeat(39 * 50));
        }
    }

    #[test]
    fn an_empty_answer_has_no_records() {
        assert!(read(&framed(&[], 0), 3).unwrap().is_empty());
    }

    #[test]
    fn malformed_answers_are_refused_by_name() {
        let whole = answer(3);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("ended in the middle", whole[..whole.len() - 4].to_vec()),
            ("no message", vec![]),
            (
                "compressed",
                framed(&PluginDataSeq::default().encode_to_vec(), 1),
            ),
            (
                "more than one message",
                [whole.clone(), framed(&[], 0)].concat(),
            ),
            ("not length-delimited", framed(&[0x08, 0x01], 0)),
            ("runs past the end", framed(&[0x0a, 0x05, 1, 2], 0)),
            ("over 2 MiB", framed(&[0x0a, 0x80, 0x80, 0x80, 0x02], 0)),
            (
                "varint over 10 bytes",
                framed(
                    &[
                        0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
                    ],
                    0,
                ),
            ),
            ("does not decode", framed(&[0x0a, 0x02, 0xff, 0xff], 0)),
        ];
        for (what, bytes) in cases {
            let err = read(&bytes, 2).expect_err(what).to_string();
            assert!(err.contains(what), "{what}: {err}");
        }
    }

    #[test]
    fn records_without_the_plugin_or_a_name_are_passed_over() {
        let mut nameless = record("x", "y");
        nameless.metadata = None;
        let mut other = record("r2", "y");
        other.spec.as_mut().unwrap().entries.remove("email");
        let seq = PluginDataSeq {
            plugin_data: vec![nameless, other, record("r3", "z")],
        };
        let got = read(&framed(&seq.encode_to_vec(), 0), 9).unwrap();
        assert_eq!(got.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), ["r3"]);
    }
}
