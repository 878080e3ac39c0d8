//! Generated protobuf and gRPC code for the Teleport API subset in `proto/`. Nothing outside
//! `teleport` uses these types: they are converted to domain types at the module's edge.
#![allow(
    clippy::all,
    clippy::pedantic,
    missing_docs,
    non_snake_case,
    unreachable_pub
)]

pub mod types {
    tonic::include_proto!("types");
}

pub mod wrappers {
    tonic::include_proto!("wrappers");
}

pub mod proto {
    tonic::include_proto!("proto");
}

/// The newer packages, nested as prost's cross-package paths expect.
pub mod teleport {
    pub mod header {
        pub mod v1 {
            tonic::include_proto!("teleport.header.v1");
        }
    }

    pub mod accessmonitoringrules {
        pub mod v1 {
            tonic::include_proto!("teleport.accessmonitoringrules.v1");
        }
    }

    pub mod accesslist {
        pub mod v1 {
            tonic::include_proto!("teleport.accesslist.v1");
        }
    }

    pub mod users {
        pub mod v1 {
            tonic::include_proto!("teleport.users.v1");
        }
    }
}

#[cfg(test)]
/// The encoded `FileDescriptorSet` of `proto/`, for checks against the wire table.
pub const DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/teleport_descriptor.bin"));

#[cfg(test)]
mod wire_table {
    //! Every message, field, enum value and method in `proto/wire-table.txt` (written from the
    //! wire facts) must be in the compiled descriptors exactly, and every field we declare must be
    //! in the table: a typo in `proto/` cannot slip through.
    use std::collections::BTreeSet;

    use prost::Message;
    use prost_types::field_descriptor_proto::{Label, Type};
    use prost_types::{DescriptorProto, FileDescriptorSet};

    const TABLE: &str = include_str!("../../proto/wire-table.txt");

    fn scalar(t: Type) -> &'static str {
        match t {
            Type::String => "string",
            Type::Bool => "bool",
            Type::Int32 => "int32",
            Type::Int64 => "int64",
            Type::Uint32 => "uint32",
            Type::Uint64 => "uint64",
            Type::Bytes => "bytes",
            _ => "?",
        }
    }

    fn compiled() -> (BTreeSet<String>, BTreeSet<String>) {
        let fds = FileDescriptorSet::decode(super::DESCRIPTOR_SET).expect("descriptor decodes");
        let mut fields = BTreeSet::new();
        let mut other = BTreeSet::new();
        for file in &fds.file {
            let pkg = file.package();
            if pkg == "google.protobuf" {
                continue;
            }
            for m in &file.message_type {
                collect(pkg, m, &mut fields);
            }
            for e in &file.enum_type {
                let values: Vec<String> = e
                    .value
                    .iter()
                    .map(|v| format!("{}={}", v.name(), v.number()))
                    .collect();
                other.insert(format!("enum {pkg}.{} {}", e.name(), values.join(" ")));
            }
            for s in &file.service {
                for m in &s.method {
                    let stream = if m.server_streaming() { " stream" } else { "" };
                    other.insert(format!(
                        "method /{pkg}.{}/{} {} {}{stream}",
                        s.name(),
                        m.name(),
                        m.input_type(),
                        m.output_type()
                    ));
                }
            }
        }
        (fields, other)
    }

    fn collect(pkg: &str, m: &DescriptorProto, out: &mut BTreeSet<String>) {
        let map_entries: BTreeSet<&str> = m
            .nested_type
            .iter()
            .filter(|n| n.options.as_ref().is_some_and(|o| o.map_entry()))
            .map(|n| n.name())
            .collect();
        for f in &m.field {
            let is_map = f
                .type_name()
                .rsplit('.')
                .next()
                .is_some_and(|n| map_entries.contains(n));
            let ty = match f.r#type() {
                _ if is_map => "map".to_owned(),
                Type::Message | Type::Enum => f.type_name().to_owned(),
                t => scalar(t).to_owned(),
            };
            let rep = if !is_map && f.label() == Label::Repeated {
                " rep"
            } else {
                ""
            };
            out.insert(format!(
                "{pkg}.{} {} {} {ty}{rep}",
                m.name(),
                f.number(),
                f.name()
            ));
        }
    }

    #[test]
    fn protos_match_the_wire_table() {
        let (fields, other) = compiled();
        let mut want_fields = BTreeSet::new();
        let mut want_other = BTreeSet::new();
        for line in TABLE
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            if line.starts_with("enum ") || line.starts_with("method ") {
                want_other.insert(line.to_owned());
            } else {
                want_fields.insert(line.to_owned());
            }
        }
        let missing: Vec<_> = want_fields.difference(&fields).collect();
        let extra: Vec<_> = fields.difference(&want_fields).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "fields in the table but not compiled: {missing:#?}\nfields compiled but not in the table: {extra:#?}"
        );
        let missing: Vec<_> = want_other.difference(&other).collect();
        assert!(
            missing.is_empty(),
            "enums/methods in the table but not compiled as written: {missing:#?}\ncompiled: {other:#?}"
        );
    }
}
