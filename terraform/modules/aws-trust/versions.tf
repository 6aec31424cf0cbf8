terraform {
  # 1.9 lets a variable's validation refer to other variables (allow_rules vs roles).
  required_version = ">= 1.9.0"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 5.81 is the first release where aws_iam_openid_connect_provider's
      # thumbprint_list is optional; IAM verifies the issuer's TLS chain itself.
      version = ">= 5.81.0, < 7.0.0"
    }
  }
}
