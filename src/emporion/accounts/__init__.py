"""Accounts: the one service for organizations, members, keys, credits, prices, margins and tiers
(``service.Accounts``), called by the admin API and the CLI alike; every change it makes is an
audit event (``audit``), written in the change's own transaction."""
