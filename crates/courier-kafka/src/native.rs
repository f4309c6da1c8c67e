//! The per-message publish call made straight on librdkafka's C API (`rd_kafka_produceva`),
//! and [`InFlight`], the delivery opaque it hands librdkafka.
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
use courier_core::{Completion, Error, ErrorKind, Topic};
use rdkafka::bindings as rd;
use rdkafka::client::Client;
use rdkafka::producer::ProducerContext;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, IntoOpaque};

/// What travels through librdkafka with each message and comes back in its delivery report:
/// the event's pending verdict and the payload librdkafka sends from.
pub struct InFlight {
    completion: Completion,
    /// Lent to librdkafka without a copy; never changed while librdkafka holds the message.
    body: Bytes,
}

impl InFlight {
    pub(crate) fn new(completion: Completion, body: Bytes) -> Self {
        Self { completion, body }
    }

    /// The verdict to resolve, once librdkafka is done with the payload.
    pub(crate) fn into_completion(self) -> Completion {
        self.completion
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

impl HeaderSink for Headers {
    fn put(&mut self, name: &str, value: &str) {
        // SAFETY: name and value are valid for their lengths, which librdkafka copies.
        let err = unsafe {
            rd::rd_kafka_header_add(
                self.0.as_ptr(),
                name.as_ptr().cast::<c_char>(),
                name.len() as isize,
                value.as_ptr().cast::<c_void>(),
                value.len() as isize,
            )
        };
        // Only a read-only list (one from a received message) refuses a header.
        debug_assert_eq!(err, rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR);
    }
}

impl Drop for Headers {
    fn drop(&mut self) {
        // SAFETY: the list was never handed to librdkafka (a sent list is forgotten).
        unsafe { rd::rd_kafka_headers_destroy(self.0.as_ptr()) }
    }
}
