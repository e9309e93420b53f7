//! Kafka admin APIs: deleting topics, adding partitions, describing and changing topic
//! configs, describing the cluster.

use std::collections::BTreeMap;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse as IncrementalResult;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, BrokerId, CreatePartitionsRequest,
    CreatePartitionsResponse, DeleteTopicsRequest, DeleteTopicsResponse, DescribeClusterRequest,
    DescribeClusterResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use weir_storage::{StorageError, TopicMeta};

use super::Shared;
use super::handlers::{CLUSTER_ID, NODE_ID, config_map, denial, error_code, error_message, text};
use crate::acl::{CLUSTER_NAME, Caller, Operation, ResourceType};

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
/// DescribeConfigs sources.
const SOURCE_TOPIC: i8 = 1;
const SOURCE_DEFAULT: i8 = 5;
/// IncrementalAlterConfigs operations.
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;

/// The ACL check of a config operation on a resource of a config request: a topic, or the
/// broker (the cluster resource, as in Kafka).
fn check_configs(
    caller: &Caller,
    operation: Operation,
    resource_type: i8,
    name: &str,
) -> Result<(), (i16, Option<StrBytes>)> {
    let checked = match resource_type {
        RESOURCE_TOPIC => caller.check(operation, ResourceType::Topic, name),
        _ => caller.check(operation, ResourceType::Cluster, CLUSTER_NAME),
    };
    checked.map_err(|denied| denial(&denied))
}

/// A config change on one resource of an (incremental) AlterConfigs: refused unless the caller
/// may alter the resource's configs, and unless it is a topic; else what `change` does.
fn altering(
    caller: &Caller,
    resource_type: i8,
    name: &str,
    change: impl FnOnce() -> Result<(), StorageError>,
) -> Result<(), (i16, Option<StrBytes>)> {
    check_configs(caller, Operation::AlterConfigs, resource_type, name)?;
    if resource_type != RESOURCE_TOPIC {
        return Err(failure(&not_a_topic(resource_type)));
    }
    change().map_err(|e| failure(&e))
}

/// Error code and message of a failed operation.
fn failure(e: &StorageError) -> (i16, Option<StrBytes>) {
    (error_code(e), Some(error_message(e.to_string())))
}

/// The name of the topic whose Kafka id is `id`, if there is one.
fn topic_named_by_id(shared: &Shared, id: uuid::Uuid) -> Option<String> {
    let names = shared.logs.topic_names().ok()?;
    names
        .into_iter()
        .find(|n| matches!(shared.logs.topic(n), Ok(Some(t)) if t.id == id))
}

pub(crate) fn delete_topics(
    shared: &Shared,
    request: DeleteTopicsRequest,
    version: i16,
    caller: &Caller,
) -> DeleteTopicsResponse {
    // v6 names topics by name or id; older versions by name only.
    let mut targets: Vec<(Option<String>, uuid::Uuid)> = request
        .topic_names
        .into_iter()
        .map(|n| (Some(n.0.to_string()), uuid::Uuid::nil()))
        .collect();
    targets.extend(
        request
            .topics
            .into_iter()
            .map(|t| (t.name.map(|n| n.0.to_string()), t.topic_id)),
    );
    let mut response = DeleteTopicsResponse::default();
    for (name, id) in targets {
        let name = name.or_else(|| topic_named_by_id(shared, id));
        let mut result = DeletableTopicResult::default();
        result.name = name.clone().map(|n| TopicName(text(n)));
        if version >= 6 {
            result.topic_id = id;
        }
        let outcome = match &name {
            Some(n) => match caller.check(Operation::Delete, ResourceType::Topic, n) {
                Ok(()) => shared.logs.delete_topic(n).map_err(|e| failure(&e)),
                Err(denied) => Err(denial(&denied)),
            },
            None => Err(failure(&StorageError::UnknownTopic {
                name: id.to_string(),
            })),
        };
        if let Err((code, message)) = outcome {
            result.error_code = code;
            if version >= 5 {
                result.error_message = message;
            }
        }
        response.responses.push(result);
    }
    response
}

pub(crate) fn create_partitions(
    shared: &Shared,
    request: CreatePartitionsRequest,
    caller: &Caller,
) -> CreatePartitionsResponse {
    let mut response = CreatePartitionsResponse::default();
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let mut result = CreatePartitionsTopicResult::default();
        result.name = topic.name.clone();
        if let Err(denied) = caller.check(Operation::Alter, ResourceType::Topic, &name) {
            (result.error_code, result.error_message) = denial(&denied);
            response.results.push(result);
            continue;
        }
        let outcome = u32::try_from(topic.count)
            .map_err(|_| StorageError::PartitionCount {
                name: name.clone(),
                current: 0,
                requested: 0,
            })
            .and_then(|count| {
                if request.validate_only {
                    let current = shared.logs.existing_topic(&name)?;
                    if count <= current.partitions {
                        return Err(StorageError::PartitionCount {
                            name: name.clone(),
                            current: current.partitions,
                            requested: count,
                        });
                    }
                    Ok(())
                } else {
                    shared.logs.create_partitions(&name, count)
                }
            });
        if let Err(e) = outcome {
            (result.error_code, result.error_message) = failure(&e);
        }
        response.results.push(result);
    }
    response
}

fn describe_topic(
    shared: &Shared,
    meta: &TopicMeta,
    keys: Option<&[String]>,
) -> Vec<DescribeConfigsResourceResult> {
    shared
        .storage
        .topic_config_keys()
        .into_iter()
        .filter(|(key, _)| keys.is_none_or(|k| k.iter().any(|want| want == key)))
        .map(|(key, default)| {
            let mut c = DescribeConfigsResourceResult::default();
            let explicit = meta.configs.get(key);
            c.name = text(key);
            c.value = Some(text(explicit.cloned().unwrap_or(default)));
            c.config_source = if explicit.is_some() {
                SOURCE_TOPIC
            } else {
                SOURCE_DEFAULT
            };
            c
        })
        .collect()
}

pub(crate) fn describe_configs(
    shared: &Shared,
    request: DescribeConfigsRequest,
    caller: &Caller,
) -> DescribeConfigsResponse {
    let mut response = DescribeConfigsResponse::default();
    for resource in request.resources {
        let mut result = DescribeConfigsResult::default();
        result.resource_type = resource.resource_type;
        result.resource_name = resource.resource_name.clone();
        if let Err(refused) = check_configs(
            caller,
            Operation::DescribeConfigs,
            resource.resource_type,
            &resource.resource_name,
        ) {
            (result.error_code, result.error_message) = refused;
            response.results.push(result);
            continue;
        }
        // No keys, or an empty list of them, asks for every key (as Kafka answers).
        let keys: Option<Vec<String>> = resource
            .configuration_keys
            .filter(|k| !k.is_empty())
            .map(|k| k.iter().map(|s| s.to_string()).collect());
        match resource.resource_type {
            RESOURCE_TOPIC => match shared.logs.topic_meta(&resource.resource_name) {
                Ok(Some(meta)) => result.configs = describe_topic(shared, &meta, keys.as_deref()),
                Ok(None) => {
                    result.error_code = ResponseError::UnknownTopicOrPartition.code();
                    result.error_message = Some(text(format!(
                        "topic {} does not exist",
                        &*resource.resource_name
                    )));
                }
                Err(e) => (result.error_code, result.error_message) = failure(&e),
            },
            // The broker's settings are flags of `weir serve`, not Kafka configs.
            RESOURCE_BROKER => {}
            other => {
                result.error_code = ResponseError::InvalidRequest.code();
                result.error_message =
                    Some(text(format!("resource type {other} is not supported")));
            }
        }
        response.results.push(result);
    }
    response
}

/// Validates and, unless `validate_only`, stores a topic's new explicit configs.
fn apply_configs(
    shared: &Shared,
    topic: &str,
    configs: BTreeMap<String, String>,
    validate_only: bool,
) -> Result<(), StorageError> {
    if validate_only {
        shared.logs.existing_topic(topic)?;
        shared.storage.check_topic_configs(&configs).map(|_| ())
    } else {
        shared.logs.set_topic_configs(topic, configs)
    }
}

fn not_a_topic(resource_type: i8) -> StorageError {
    StorageError::InvalidConfig {
        key: "resource_type".into(),
        value: resource_type.to_string(),
        reason: "only topic configs can be changed".into(),
    }
}

pub(crate) fn alter_configs(
    shared: &Shared,
    request: AlterConfigsRequest,
    caller: &Caller,
) -> AlterConfigsResponse {
    let mut response = AlterConfigsResponse::default();
    for resource in request.resources {
        let mut result = AlterConfigsResourceResponse::default();
        result.resource_type = resource.resource_type;
        result.resource_name = resource.resource_name.clone();
        // AlterConfigs replaces the whole set: keys left out return to their defaults.
        let configs = config_map(resource.configs.iter().map(|c| (&c.name, c.value.as_ref())));
        let outcome = altering(
            caller,
            resource.resource_type,
            &resource.resource_name,
            || {
                apply_configs(
                    shared,
                    &resource.resource_name,
                    configs,
                    request.validate_only,
                )
            },
        );
        if let Err(refused) = outcome {
            (result.error_code, result.error_message) = refused;
        }
        response.responses.push(result);
    }
    response
}

pub(crate) fn incremental_alter_configs(
    shared: &Shared,
    request: IncrementalAlterConfigsRequest,
    caller: &Caller,
) -> IncrementalAlterConfigsResponse {
    let mut response = IncrementalAlterConfigsResponse::default();
    for resource in request.resources {
        let mut result = IncrementalResult::default();
        result.resource_type = resource.resource_type;
        result.resource_name = resource.resource_name.clone();
        let name = resource.resource_name.to_string();
        let outcome = altering(caller, resource.resource_type, &name, || {
            shared.logs.existing_topic(&name).and_then(|meta| {
                let mut configs = meta.configs;
                for c in &resource.configs {
                    match (c.config_operation, &c.value) {
                        (OP_SET, Some(v)) => {
                            configs.insert(c.name.to_string(), v.to_string());
                        }
                        (OP_DELETE, _) => {
                            configs.remove(&*c.name);
                        }
                        (op, _) => {
                            return Err(StorageError::InvalidConfig {
                                key: c.name.to_string(),
                                value: c.value.as_deref().unwrap_or("").to_string(),
                                reason: format!(
                                    "operation {op} is not supported (SET and DELETE are)"
                                ),
                            });
                        }
                    }
                }
                apply_configs(shared, &name, configs, request.validate_only)
            })
        });
        if let Err(refused) = outcome {
            (result.error_code, result.error_message) = refused;
        }
        response.responses.push(result);
    }
    response
}

pub(crate) fn describe_cluster(
    shared: &Shared,
    _request: DescribeClusterRequest,
) -> DescribeClusterResponse {
    let mut response = DescribeClusterResponse::default();
    response.cluster_id = text(CLUSTER_ID);
    let brokers = shared.logs.brokers();
    response.controller_id = BrokerId(brokers.first().map_or(NODE_ID, |b| b.id));
    for b in brokers {
        let mut broker = DescribeClusterBroker::default();
        broker.broker_id = BrokerId(b.id);
        broker.host = text(b.host);
        broker.port = i32::from(b.port);
        response.brokers.push(broker);
    }
    response
}
