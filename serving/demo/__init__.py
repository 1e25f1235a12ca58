"""The browser demo served at `/demo/` on the REST port: static files, the data they read, and
`site`, which answers the demo's paths."""
