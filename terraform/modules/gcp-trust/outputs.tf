output "broker_roles_yaml" {
  description = "A `roles:` block for the broker config, one entry per broker role. Roles without allow_rules have `allow: []`, which `ci-broker check` rejects until you add rules."
  value       = local.broker_roles_yaml
}

output "broker_roles" {
  description = "The same entries as broker_roles_yaml as an object, to merge into a config you build with yamlencode."
  value       = local.broker_roles
}

output "audience" {
  description = "The provider's full resource name, the `gcp.audience` of every role of this pool."
  value       = local.audience
}

output "principals" {
  description = "IAM principal (principal://.../subject/role:NAME) per broker role name, for bindings made outside this module."
  value       = local.principals
}

output "workload_identity_pool_name" {
  description = "Resource name of the workload identity pool."
  value       = google_iam_workload_identity_pool.broker.name
}

output "attribute_condition" {
  description = "The CEL condition that admits only the configured role subjects, for review."
  value       = google_iam_workload_identity_pool_provider.broker.attribute_condition
}
