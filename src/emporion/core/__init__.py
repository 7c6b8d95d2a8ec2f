"""The types every layer shares and none owns: money, prices, usage, and (as the typed core grows)
requests, completions and chunks. Imports nothing from the rest of Emporion."""
