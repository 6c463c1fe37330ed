"""One router per area: the JSON API, TorchServe compatibility, health and metrics, the web page."""
