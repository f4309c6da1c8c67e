//! The per-message publish call made straight on librdkafka's C API (`rd_kafka_produceva`),
//! [`InFlight`], the delivery opaque it hands librdkafka, and the byte-level reading of a
//! received record's headers.
//!
//! rust-rdkafka's `BaseProducer::send` allocates a C string of the topic name per message,
//! makes librdkafka look that name up under a lock, and copies the payload into the message
//! (`RD_KAFKA_MSG_F_COPY`). Here a send names its topic by a cached handle and lends librdkafka
//! the payload: the payload belongs to the message's [`InFlight`], which librdkafka hands back
//! with the delivery report, after its last use of the payload.
//!
//! The opaque pointer crosses into C and back, so its type is pinned at compile time:
//! [`produce`] only accepts clients whose
//! [`ProducerContext::DeliveryOpaque`] is [`DeliveryOpaque`], and it converts with that type's
//! own [`IntoOpaque`] pair, the one rust-rdkafka's delivery callback uses to turn the pointer
//! back. This module imports nothing from the rest of the crate.

use std::collections::HashMap;
use std::ffi::{c_char, c_void, CString};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use courier_core::wire::HeaderSink;
use courier_core::{Completion, Error, ErrorKind, Position, Topic};
use rdkafka::bindings as rd;
use rdkafka::client::Client;
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::ProducerContext;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, IntoOpaque};
use tokio::sync::oneshot;

use crate::dedup;

/// What travels through librdkafka with each message and comes back in its delivery report:
/// who waits for the broker's verdict and the payload librdkafka sends from.
pub struct InFlight {
    reply: Reply,
    /// Lent to librdkafka without a copy; never changed while librdkafka holds the message.
    body: Bytes,
}

/// Who waits for a message's delivery report.
pub(crate) enum Reply {
    /// A published event's verdict, and the key its acknowledgement is remembered under.
    Event(Completion, dedup::Key),
    /// A record forwarded as it was received (a dead-letter copy of a record that is not an
    /// event): where the broker stored it, or why not.
    Record(oneshot::Sender<Result<Position, Error>>),
}

impl Reply {
    /// Hands `error` to whoever waits.
    pub(crate) fn fail(self, error: Error) {
        match self {
            Self::Event(completion, _) => completion.complete(Err(error)),
            // A dropped receiver means nobody waits any more.
            Self::Record(tx) => drop(tx.send(Err(error))),
        }
    }
}

impl InFlight {
    pub(crate) fn new(reply: Reply, body: Bytes) -> Self {
        Self { reply, body }
    }

    /// What the message is, for error messages.
    pub(crate) fn describe(&self) -> String {
        match &self.reply {
            Reply::Event(completion, _) => format!("event {}", completion.event_id()),
            Reply::Record(_) => "a forwarded record".to_owned(),
        }
    }

    /// Who waits for the verdict, once librdkafka is done with the payload.
    pub(crate) fn into_reply(self) -> Reply {
        self.reply
    }
}

/// The delivery opaque of every message sent through [`produce`]; a producer's context must
/// declare it as its [`ProducerContext::DeliveryOpaque`]. Boxed: one pointer crosses into C.
pub(crate) type DeliveryOpaque = Box<InFlight>;

/// librdkafka's handle of one topic, held by the application.
pub(crate) struct TopicHandle(NonNull<rd::rd_kafka_topic_t>);

// SAFETY: librdkafka's API is thread-safe: a topic handle may be used and released from any
// thread.
unsafe impl Send for TopicHandle {}
// SAFETY: as above; the handle is only passed to librdkafka, never mutated from Rust.
unsafe impl Sync for TopicHandle {}

impl Drop for TopicHandle {
    fn drop(&mut self) {
        // SAFETY: the handle came from rd_kafka_topic_new and is released once, before the
        // client it was made on: `TopicHandles` is dropped before the client that owns it (see
        // `ProducerInstance`), and a handle taken out of it is dropped while the client is held.
        unsafe { rd::rd_kafka_topic_destroy(self.0.as_ptr()) }
    }
}

/// The topic handles of one producer, made on its first send to each topic. Must be dropped
/// before the producer's client.
#[derive(Default)]
pub(crate) struct TopicHandles(Mutex<HashMap<Topic, Arc<TopicHandle>>>);

impl TopicHandles {
    /// `topic`'s handle on `client`, made on first use.
    pub(crate) fn get<C: ClientContext>(
        &self,
        client: &Client<C>,
        topic: &Topic,
    ) -> Result<Arc<TopicHandle>, Error> {
        let mut handles = self.0.lock().expect("topic handles lock");
        if let Some(handle) = handles.get(topic) {
            return Ok(Arc::clone(handle));
        }
        // Topic names are validated to a character set without NUL.
        let name = CString::new(topic.as_str()).expect("topic names hold no NUL");
        // SAFETY: the client is live and `name` a C string; a null conf means the topic defaults.
        let raw = unsafe { rd::rd_kafka_topic_new(client.native_ptr(), name.as_ptr(), std::ptr::null_mut()) };
        let handle = NonNull::new(raw).map(|raw| Arc::new(TopicHandle(raw))).ok_or_else(|| {
            Error::new(ErrorKind::InvalidInput, format!("librdkafka refused a handle for topic {topic}"))
        })?;
        handles.insert(topic.clone(), Arc::clone(&handle));
        Ok(handle)
    }

    /// Forgets `topic`'s handle, so a deleted topic is not kept alive in librdkafka.
    pub(crate) fn forget(&self, topic: &Topic) {
        self.0.lock().expect("topic handles lock").remove(topic);
    }
}

/// A message librdkafka did not take, handed back with the reason so the caller can retry or
/// report it.
pub(crate) struct Refused {
    /// Why; for a fatal refusal, the code of the fatal error raised earlier.
    pub(crate) code: RDKafkaErrorCode,
    /// The client raised a fatal error earlier (e.g. the idempotent producer lost track of its
    /// sequence numbers) and refuses every message from now on.
    pub(crate) fatal: bool,
    pub(crate) headers: Headers,
    pub(crate) in_flight: DeliveryOpaque,
}

/// Hands one message to librdkafka on `client`: the key is copied, the headers are
/// taken, and the payload of `in_flight` is lent until the message's delivery report, which
/// brings `in_flight` back. On refusal, headers and `in_flight` come back in [`Refused`].
///
/// `topic` must be a handle made on `client` (by its [`TopicHandles`]).
pub(crate) fn produce<C>(
    client: &Client<C>,
    topic: &TopicHandle,
    key: &[u8],
    headers: Headers,
    in_flight: DeliveryOpaque,
) -> Result<(), Refused>
where
    C: ProducerContext<DeliveryOpaque = DeliveryOpaque>,
{
    // The payload's bytes live in the `Bytes` storage, not in the box, so turning the box into
    // a pointer below moves nothing they are in.
    let payload = mem(&in_flight.body);
    // The same conversion rust-rdkafka's delivery callback undoes with `C::DeliveryOpaque`.
    let opaque = C::DeliveryOpaque::into_ptr(in_flight);
    let vus = [
        vu(VType::RD_KAFKA_VTYPE_RKT, Value { rkt: topic.0.as_ptr() }),
        // Neither copy nor free the payload: it is lent (see above).
        vu(VType::RD_KAFKA_VTYPE_MSGFLAGS, Value { i: 0 }),
        vu(VType::RD_KAFKA_VTYPE_KEY, mem(key)),
        vu(VType::RD_KAFKA_VTYPE_VALUE, payload),
        vu(VType::RD_KAFKA_VTYPE_HEADERS, Value { headers: headers.0.as_ptr() }),
        vu(VType::RD_KAFKA_VTYPE_OPAQUE, Value { ptr: opaque }),
    ];
    // SAFETY: the client and the topic handle are live (the caller holds both), the key and
    // headers are valid for the call, and the payload stays valid and unchanged until the
    // opaque that owns it comes back: on refusal below, else in the delivery report. librdkafka
    // takes the headers and the opaque on success and keeps neither on failure.
    let failed = unsafe { rd::rd_kafka_produceva(client.native_ptr(), vus.as_ptr(), vus.len()) };
    if failed.is_null() {
        // librdkafka destroys the headers with the message.
        std::mem::forget(headers);
        return Ok(());
    }
    // SAFETY: `failed` is the error object this call returned, read before it is destroyed,
    // and destroyed once. librdkafka did not take the message, so `opaque`, made by `into_ptr`
    // above, is turned back exactly once, here, by the same type's `from_ptr`.
    let (code, fatal, in_flight) = unsafe {
        let code = RDKafkaErrorCode::from(rd::rd_kafka_error_code(failed));
        let fatal = rd::rd_kafka_error_is_fatal(failed) != 0;
        rd::rd_kafka_error_destroy(failed);
        (code, fatal, C::DeliveryOpaque::from_ptr(opaque))
    };
    Err(Refused { code, fatal, headers, in_flight })
}

type VType = rd::rd_kafka_vtype_t;
type Value = rd::rd_kafka_vu_s__bindgen_ty_1;

fn vu(vtype: VType, u: Value) -> rd::rd_kafka_vu_t {
    rd::rd_kafka_vu_t { vtype, u }
}

fn mem(bytes: &[u8]) -> Value {
    Value {
        mem: rd::rd_kafka_vu_s__bindgen_ty_1__bindgen_ty_1 {
            ptr: bytes.as_ptr().cast_mut().cast(),
            size: bytes.len(),
        },
    }
}

/// A librdkafka header list filled straight from the encoder: each header is one copy into
/// librdkafka's list, with no intermediate string.
pub(crate) struct Headers(NonNull<rd::rd_kafka_headers_t>);

// SAFETY: the list is owned by this value alone until librdkafka takes it.
unsafe impl Send for Headers {}

impl Headers {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        // SAFETY: allocates a new, empty list (librdkafka aborts rather than return null).
        let raw = unsafe { rd::rd_kafka_headers_new(capacity) };
        Self(NonNull::new(raw).expect("librdkafka allocated a header list"))
    }
}

impl Headers {
    /// Adds a header as bytes, which need not be UTF-8 (a received record's, forwarded as is);
    /// a `None` value is a null value.
    pub(crate) fn put_bytes(&mut self, name: &[u8], value: Option<&[u8]>) {
        let (value_ptr, value_len) = value.map_or((std::ptr::null(), 0), |v| (v.as_ptr(), v.len() as isize));
        // SAFETY: name and value are valid for their lengths, which librdkafka copies; a null
        // value pointer makes a null value.
        let err = unsafe {
            rd::rd_kafka_header_add(
                self.0.as_ptr(),
                name.as_ptr().cast::<c_char>(),
                name.len() as isize,
                value_ptr.cast::<c_void>(),
                value_len,
            )
        };
        // Only a read-only list (one from a received message) refuses a header.
        debug_assert_eq!(err, rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR);
    }
}

impl HeaderSink for Headers {
    fn put(&mut self, name: &str, value: &str) {
        self.put_bytes(name.as_bytes(), Some(value.as_bytes()));
    }
}

/// A received header as bytes: its name and its value (`None`: a null value).
pub(crate) type RawHeader = (Vec<u8>, Option<Vec<u8>>);

/// The headers of a received message as bytes, in order.
///
/// rust-rdkafka's header accessors (`Headers::get`, `try_get`, `iter`, `get_as`) all turn the
/// name into a `&str` with `unwrap`, so a name that is not UTF-8, which any other client may
/// write, panics inside them. This reads librdkafka's list directly instead. librdkafka keeps a
/// name as a NUL-terminated string: a name with a NUL byte inside reads up to that byte.
pub(crate) fn header_bytes(message: &BorrowedMessage<'_>) -> Vec<RawHeader> {
    let mut list = std::ptr::null_mut();
    // SAFETY: the message is live for this call; librdkafka sets `list` to the message's own
    // header list (still owned by the message) or reports that it has none.
    let err = unsafe { rd::rd_kafka_message_headers(message.ptr(), &mut list) };
    if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || list.is_null() {
        return Vec::new();
    }
    let mut headers = Vec::new();
    for index in 0.. {
        let (mut name, mut value, mut size) = (std::ptr::null(), std::ptr::null(), 0);
        // SAFETY: `list` is the live message's list; an index past the end reports an error.
        let err = unsafe { rd::rd_kafka_header_get_all(list, index, &mut name, &mut value, &mut size) };
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            break;
        }
        // SAFETY: librdkafka returns a NUL-terminated name and a value of `size` bytes (or a
        // null value), both valid while the message lives; both are copied here.
        let header = unsafe {
            let name = std::ffi::CStr::from_ptr(name).to_bytes().to_vec();
            let value =
                (!value.is_null()).then(|| std::slice::from_raw_parts(value.cast::<u8>(), size).to_vec());
            (name, value)
        };
        headers.push(header);
    }
    headers
}

impl Drop for Headers {
    fn drop(&mut self) {
        // SAFETY: the list was never handed to librdkafka (a sent list is forgotten).
        unsafe { rd::rd_kafka_headers_destroy(self.0.as_ptr()) }
    }
}
