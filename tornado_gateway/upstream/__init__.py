"""The upstream HTTP client: pooled keep-alive connections on Tornado's own HTTP/1.1 code."""
