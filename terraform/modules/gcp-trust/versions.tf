terraform {
  # 1.9 lets a variable's validation refer to other variables (allow_rules vs roles).
  required_version = ">= 1.9.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 5.0.0, < 8.0.0"
    }
  }
}
