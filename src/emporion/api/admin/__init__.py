"""The admin API (/admin/v1): thin routes over the accounts service (emporion.accounts)."""
