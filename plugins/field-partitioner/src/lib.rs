//! `field-partitioner`: puts each record in the partition Kafka's default partitioner would
//! choose for a key equal to the JSON field `field` (murmur2 of its text), so records land where
//! a Java producer keyed by that field would put them. Records without the field go by their
//! key, and keyless ones by their whole value.
//!
//! ```text
//! weir plugin deploy by-host field_partitioner.wasm --param field=host
//! ```

use weir::serde_json::Value;
use weir::{Params, Record, Result, partition_for_key};

#[weir::partitioner]
pub fn field_partitioner(r: &Record, partitions: u32, params: &Params) -> Result<u32> {
    let field = params.require("field")?;
    let from_field = r.value_field(field).ok().flatten().map(|v| match v {
        Value::String(s) => s,
        other => other.to_string(),
    });
    let key: &[u8] = match (&from_field, r.key.as_deref()) {
        (Some(text), _) => text.as_bytes(),
        (None, Some(key)) => key,
        (None, None) => &r.value,
    };
    Ok(partition_for_key(key, partitions))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
        Params::from_pairs([("field", "host")])
    }

    #[test]
    fn partition_is_the_kafka_partition_of_the_field() {
        let r = Record::new(r#"{"host": "web-1", "status": 200}"#);
        assert_eq!(
            field_partitioner(&r, 6, &params()),
            Ok(partition_for_key(b"web-1", 6))
        );
        // Same host, same partition, whatever else the record holds.
        let other = Record::new(r#"{"status": 500, "host": "web-1"}"#);
        assert_eq!(
            field_partitioner(&other, 6, &params()),
            field_partitioner(&r, 6, &params())
        );
    }

    #[test]
    fn records_without_the_field_go_by_key() {
        let r = Record::new("plain text").with_key("k1");
        assert_eq!(
            field_partitioner(&r, 4, &params()),
            Ok(partition_for_key(b"k1", 4))
        );
        let keyless = Record::new("plain text");
        assert_eq!(
            field_partitioner(&keyless, 4, &params()),
            Ok(partition_for_key(b"plain text", 4))
        );
    }

    #[test]
    fn the_field_parameter_is_required() {
        assert!(field_partitioner(&Record::new("{}"), 4, &Params::default()).is_err());
    }
}
