"""OAI-PMH network records: parsing, validation against rule sets, and (later) transformation."""
