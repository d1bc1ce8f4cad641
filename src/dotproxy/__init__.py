"""dotproxy: an asyncio DNS forwarding engine, plain DNS in, DNS-over-TLS and DNS-over-HTTPS/2 out."""

__version__ = "0.1.0"
