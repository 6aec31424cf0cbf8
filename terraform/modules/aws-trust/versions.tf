terraform {
  # 1.9 lets a variable's validation refer to other variables (allow_rules vs roles).
  required_version = ">= 1.9.0"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 5.81.0 is the first release where aws_iam_openid_connect_provider's thumbprint_list
      # is optional (IAM verifies the issuer's TLS chain itself): the provider's changelog
      # entry .changelog/37255.txt, "resource/aws_iam_openid_connect_provider: Make
      # `thumbprint_list` attribute optional", from hashicorp/terraform-provider-aws#37255,
      # merged on 2024-12-10, between 5.80.0 (2024-12-04) and 5.81.0 (2024-12-12).
      # Planned, applied (against moto) and destroyed in CI with 5.100.0.
      version = ">= 5.81.0, < 7.0.0"
    }
  }
}
