//! CreateAcls, DescribeAcls and DeleteAcls: Kafka's admin tools (`kafka-acls.sh`, the admin
//! clients) manage the node's ACLs as they do a Kafka cluster's. Creating and deleting need
//! ALTER on the cluster, describing needs DESCRIBE on it.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::delete_acls_response::{
    DeleteAclsFilterResult, DeleteAclsMatchingAcl,
};
use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::{
    CreateAclsRequest, CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse,
    DescribeAclsRequest, DescribeAclsResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::Shared;
use super::handlers::{denial, error_message, text};
use crate::acl::{
    Acl, AclError, AclFilter, CLUSTER_NAME, Caller, Operation, PatternFilter, PatternType,
    Permission, ResourceType,
};

/// Kafka's `ANY` in a filter's enum fields.
const ANY: i8 = 1;
/// Kafka's `MATCH` pattern filter.
const MATCH: i8 = 2;

fn refusal(e: &AclError) -> (i16, Option<StrBytes>) {
    let code = match e {
        AclError::Invalid(_) => ResponseError::InvalidRequest,
        AclError::TooMany { .. } => ResponseError::PolicyViolation,
        AclError::Storage(_) => ResponseError::KafkaStorageError,
    };
    (code.code(), Some(error_message(e.to_string())))
}

/// The fields of a filter as Kafka sends them.
struct WireFilter<'a> {
    resource_type: i8,
    resource_name: Option<&'a StrBytes>,
    pattern_type: i8,
    principal: Option<&'a StrBytes>,
    host: Option<&'a StrBytes>,
    operation: i8,
    permission: i8,
}

/// The filter, or `None` when it names a kind this node has no rules of (a transactional id, a
/// delegation token), which matches nothing.
fn filter(wire: WireFilter<'_>) -> Option<AclFilter> {
    fn field<T>(code: i8, from: impl Fn(i8) -> Option<T>) -> Option<Option<T>> {
        if code == ANY {
            Some(None)
        } else {
            from(code).map(Some)
        }
    }
    let pattern_type = match wire.pattern_type {
        ANY => None,
        MATCH => Some(PatternFilter::Match),
        code => match PatternType::from_code(code)? {
            PatternType::Literal => Some(PatternFilter::Literal),
            PatternType::Prefixed => Some(PatternFilter::Prefixed),
        },
    };
    Some(AclFilter {
        resource_type: field(wire.resource_type, ResourceType::from_code)?,
        resource_name: wire.resource_name.map(|n| n.to_string()),
        pattern_type,
        principal: wire.principal.map(|p| p.to_string()),
        host: wire.host.map(|h| h.to_string()),
        operation: field(wire.operation, Operation::from_code)?,
        permission: field(wire.permission, Permission::from_code)?,
    })
}

pub(crate) fn create_acls(
    shared: &Shared,
    request: CreateAclsRequest,
    caller: &Caller,
) -> CreateAclsResponse {
    let mut response = CreateAclsResponse::default();
    let allowed = caller.check(Operation::Alter, ResourceType::Cluster, CLUSTER_NAME);
    for creation in request.creations {
        let mut result = AclCreationResult::default();
        let acl = || -> Result<Acl, AclError> {
            let unknown = |what: &str, code: i8| {
                AclError::Invalid(format!(
                    "{what} {code} is not one this node keeps rules for"
                ))
            };
            Ok(Acl {
                resource_type: ResourceType::from_code(creation.resource_type)
                    .ok_or_else(|| unknown("resource type", creation.resource_type))?,
                resource_name: creation.resource_name.to_string(),
                pattern_type: PatternType::from_code(creation.resource_pattern_type)
                    .ok_or_else(|| unknown("pattern type", creation.resource_pattern_type))?,
                principal: creation.principal.to_string(),
                host: creation.host.to_string(),
                operation: Operation::from_code(creation.operation)
                    .ok_or_else(|| unknown("operation", creation.operation))?,
                permission: Permission::from_code(creation.permission_type)
                    .ok_or_else(|| unknown("permission", creation.permission_type))?,
            })
        };
        let outcome = match &allowed {
            Err(denied) => Err(denial(denied)),
            Ok(()) => acl()
                .and_then(|acl| shared.acls.add(std::slice::from_ref(&acl)))
                .map_err(|e| refusal(&e)),
        };
        if let Err((code, message)) = outcome {
            (result.error_code, result.error_message) = (code, message);
        }
        response.results.push(result);
    }
    response
}

pub(crate) fn describe_acls(
    shared: &Shared,
    request: DescribeAclsRequest,
    caller: &Caller,
) -> DescribeAclsResponse {
    let mut response = DescribeAclsResponse::default();
    if let Err(denied) = caller.check(Operation::Describe, ResourceType::Cluster, CLUSTER_NAME) {
        (response.error_code, response.error_message) = denial(&denied);
        return response;
    }
    let wanted = filter(WireFilter {
        resource_type: request.resource_type_filter,
        resource_name: request.resource_name_filter.as_ref(),
        pattern_type: request.pattern_type_filter,
        principal: request.principal_filter.as_ref(),
        host: request.host_filter.as_ref(),
        operation: request.operation,
        permission: request.permission_type,
    });
    let acls = wanted.map(|f| shared.acls.list(&f)).unwrap_or_default();
    // One entry per resource, its rules under it.
    for acl in acls {
        let description = {
            let mut d = AclDescription::default();
            d.principal = text(&acl.principal);
            d.host = text(&acl.host);
            d.operation = acl.operation.code();
            d.permission_type = acl.permission.code();
            d
        };
        let same = |r: &DescribeAclsResource| {
            r.resource_type == acl.resource_type.code()
                && r.pattern_type == acl.pattern_type.code()
                && *r.resource_name == acl.resource_name
        };
        match response.resources.iter_mut().find(|r| same(r)) {
            Some(resource) => resource.acls.push(description),
            None => {
                let mut resource = DescribeAclsResource::default();
                resource.resource_type = acl.resource_type.code();
                resource.resource_name = text(&acl.resource_name);
                resource.pattern_type = acl.pattern_type.code();
                resource.acls.push(description);
                response.resources.push(resource);
            }
        }
    }
    response
}

pub(crate) fn delete_acls(
    shared: &Shared,
    request: DeleteAclsRequest,
    caller: &Caller,
) -> DeleteAclsResponse {
    let mut response = DeleteAclsResponse::default();
    let allowed = caller.check(Operation::Alter, ResourceType::Cluster, CLUSTER_NAME);
    for wire in &request.filters {
        let mut result = DeleteAclsFilterResult::default();
        if let Err(denied) = &allowed {
            (result.error_code, result.error_message) = denial(denied);
            response.filter_results.push(result);
            continue;
        }
        let wanted = filter(WireFilter {
            resource_type: wire.resource_type_filter,
            resource_name: wire.resource_name_filter.as_ref(),
            pattern_type: wire.pattern_type_filter,
            principal: wire.principal_filter.as_ref(),
            host: wire.host_filter.as_ref(),
            operation: wire.operation,
            permission: wire.permission_type,
        });
        match wanted
            .map(|f| shared.acls.delete(&f))
            .unwrap_or(Ok(Vec::new()))
        {
            Ok(gone) => {
                for acl in gone {
                    let mut m = DeleteAclsMatchingAcl::default();
                    m.resource_type = acl.resource_type.code();
                    m.resource_name = text(&acl.resource_name);
                    m.pattern_type = acl.pattern_type.code();
                    m.principal = text(&acl.principal);
                    m.host = text(&acl.host);
                    m.operation = acl.operation.code();
                    m.permission_type = acl.permission.code();
                    result.matching_acls.push(m);
                }
            }
            Err(e) => (result.error_code, result.error_message) = refusal(&e),
        }
        response.filter_results.push(result);
    }
    response
}
