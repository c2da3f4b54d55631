//! Encoding: every message becomes one JSON object, written directly.
//!
//! Raw values are copied in as they are, so a relayed payload keeps its exact
//! bytes; strings are escaped by serde_json. Writing by hand (rather than
//! through serde's tagged enums) keeps the hot relay messages to one
//! allocation of the right size.

use crate::{
    ClientToServer, Config, DeviceToServer, ErrorMsg, IceServer, RawValue, Resume, ResumeOffer,
    Resumed, ServerToClient, ServerToDevice,
};

/// Builds one JSON object field by field.
struct ObjectWriter {
    out: String,
}

impl ObjectWriter {
    fn new(capacity: usize) -> Self {
        let mut out = String::with_capacity(capacity + 2);
        out.push('{');
        Self { out }
    }

    fn typed(message_type: &str, capacity: usize) -> Self {
        let mut writer = Self::new(capacity + 20 + message_type.len());
        writer.key("message_type");
        writer.out.push('"');
        // Message type names are fixed ASCII words with nothing to escape.
        writer.out.push_str(message_type);
        writer.out.push('"');
        writer
    }

    fn key(&mut self, key: &str) {
        if self.out.len() > 1 {
            self.out.push(',');
        }
        self.out.push('"');
        self.out.push_str(key);
        self.out.push_str("\":");
    }

    fn raw(mut self, key: &str, value: &RawValue) -> Self {
        self.key(key);
        self.out.push_str(value.get());
        self
    }

    fn string(mut self, key: &str, value: &str) -> Self {
        self.key(key);
        push_json_string(&mut self.out, value);
        self
    }

    fn uint(mut self, key: &str, value: u64) -> Self {
        self.key(key);
        self.out.push_str(&value.to_string());
        self
    }

    fn ice_servers(mut self, servers: &[IceServer]) -> Self {
        self.key("ice_servers");
        // Serializing plain owned structs cannot fail.
        let json = serde_json::to_string(servers).unwrap_or_else(|_| "[]".to_owned());
        self.out.push_str(&json);
        self
    }

    fn finish(mut self) -> String {
        self.out.push('}');
        self.out
    }
}

fn encode_resume(resume: &Resume<'_>) -> String {
    ObjectWriter::typed("resume", resume.token.len() + 32)
        .string("token", &resume.token)
        .uint("received", resume.received)
        .finish()
}

fn encode_resumed(resumed: &Resumed<'_>) -> String {
    let mut frame = ObjectWriter::typed("resumed", 32)
        .uint("received", resumed.received)
        .finish();
    resumed.resume.append_to(&mut frame);
    frame
}

impl ResumeOffer<'_> {
    /// `frame` (one JSON object, as every encoder here writes it) with this
    /// offer as its last field: `"resume":{"token":…,"window_ms":…}`.
    pub fn append_to(&self, frame: &mut String) {
        debug_assert!(frame.ends_with('}'), "not an object: {frame}");
        frame.pop();
        let mut writer = ObjectWriter {
            out: std::mem::take(frame),
        };
        writer.key("resume");
        let offer = ObjectWriter::new(self.token.len() + 32)
            .string("token", &self.token)
            .uint("window_ms", self.window_ms)
            .finish();
        writer.out.push_str(&offer);
        *frame = writer.finish();
    }
}

fn push_json_string(out: &mut String, value: &str) {
    // Serializing a &str cannot fail.
    let escaped = serde_json::to_string(value).unwrap_or_else(|_| "\"\"".to_owned());
    out.push_str(&escaped);
}

fn encode_config(config: &Config) -> String {
    ObjectWriter::typed("config", 64)
        .ice_servers(&config.ice_servers)
        .finish()
}

fn encode_error(error: &ErrorMsg<'_>) -> String {
    ObjectWriter::new(error.error.len() + 12)
        .string("error", &error.error)
        .finish()
}

impl DeviceToServer<'_> {
    /// The frame text of this message.
    pub fn encode(&self) -> String {
        match self {
            Self::Register(m) => {
                let info_len = m.device_info.map_or(0, |i| i.get().len());
                let mut writer = ObjectWriter::typed("register", m.device_id.len() + info_len + 48)
                    .string("device_id", &m.device_id);
                if let Some(port) = m.device_port {
                    writer = writer.uint("device_port", u64::from(port));
                }
                match m.device_info {
                    Some(info) => writer.raw("device_info", info).finish(),
                    None => writer.finish(),
                }
            }
            Self::Forward(m) => ObjectWriter::typed("forward", m.payload.get().len() + 40)
                .uint("client_id", m.client_id)
                .raw("payload", m.payload)
                .finish(),
            Self::Resume(resume) => encode_resume(resume),
        }
    }
}

impl ClientToServer<'_> {
    /// The frame text of this message.
    pub fn encode(&self) -> String {
        match self {
            Self::Connect(m) => ObjectWriter::typed("connect", m.device_id.len() + 16)
                .string("device_id", &m.device_id)
                .finish(),
            Self::Forward(m) => ObjectWriter::typed("forward", m.payload.get().len() + 12)
                .raw("payload", m.payload)
                .finish(),
            Self::Resume(resume) => encode_resume(resume),
        }
    }
}

impl ServerToDevice<'_> {
    /// The frame text of this message.
    pub fn encode(&self) -> String {
        match self {
            Self::Config(config) => encode_config(config),
            Self::ClientMsg(m) => ObjectWriter::typed("client_msg", m.payload.get().len() + 40)
                .uint("client_id", m.client_id)
                .raw("payload", m.payload)
                .finish(),
            Self::ClientDisconnected(m) => ObjectWriter::typed("client_disconnected", 32)
                .uint("client_id", m.client_id)
                .finish(),
            Self::Error(error) => encode_error(error),
            Self::Resumed(resumed) => encode_resumed(resumed),
        }
    }
}

impl ServerToClient<'_> {
    /// The frame text of this message.
    pub fn encode(&self) -> String {
        match self {
            Self::Config(config) => encode_config(config),
            Self::DeviceInfo(m) => {
                ObjectWriter::typed("device_info", m.device_info.get().len() + 16)
                    .raw("device_info", m.device_info)
                    .finish()
            }
            Self::DeviceMsg(m) => ObjectWriter::typed("device_msg", m.payload.get().len() + 12)
                .raw("payload", m.payload)
                .finish(),
            Self::Error(error) => encode_error(error),
            Self::Resumed(resumed) => encode_resumed(resumed),
        }
    }
}

impl Config {
    /// The `config` frame's text; the same to a device and to a client.
    pub fn encode(&self) -> String {
        encode_config(self)
    }
}
