output "broker_roles_yaml" {
  description = "A `roles:` block for the broker config, one entry per broker role. Roles without allow_rules have `allow: []`, which `ci-broker check` rejects until you add rules."
  value       = local.broker_roles_yaml
}

output "broker_roles" {
  description = "The same entries as broker_roles_yaml as an object, to merge into a config you build with yamlencode."
  value       = local.broker_roles
}

output "tenant_id" {
  description = "The Entra ID tenant of the identities."
  value       = local.tenant_id
}

output "client_ids" {
  description = "Client (application) ID per broker role name."
  value       = local.client_ids
}

output "principal_ids" {
  description = "Service principal object ID per broker role name, for role assignments made outside this module."
  value       = local.principal_ids
}
