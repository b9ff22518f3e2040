"""Test helpers shared by oomkit's live-kernel suites (owned by the linux layer)."""
