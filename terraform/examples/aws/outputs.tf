output "broker_roles_yaml" {
  description = "Paste under the broker config's top level (or merge into its roles:)."
  value       = module.broker_trust.broker_roles_yaml
}

output "role_arns" {
  description = "IAM role ARN per broker role name."
  value       = module.broker_trust.role_arns
}

output "trust_policies" {
  description = "Trust policy JSON per role, for review before the first pipeline runs."
  value       = module.broker_trust.trust_policies
}
