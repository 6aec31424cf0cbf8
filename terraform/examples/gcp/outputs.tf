output "broker_roles_yaml" {
  description = "Paste under the broker config's top level (or merge into its roles:)."
  value       = module.broker_trust.broker_roles_yaml
}

output "principals" {
  description = "IAM principal per broker role name, for bindings on single resources."
  value       = module.broker_trust.principals
}

output "attribute_condition" {
  description = "The provider's condition, for review before the first pipeline runs."
  value       = module.broker_trust.attribute_condition
}
