output "broker_roles_yaml" {
  description = "Paste under the broker config's top level (or merge into its roles:)."
  value       = module.broker_trust.broker_roles_yaml
}

output "client_ids" {
  description = "Client ID per broker role name."
  value       = module.broker_trust.client_ids
}
