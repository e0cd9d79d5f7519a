"""`histodetect serve`: an HTTP API and a browser page over one loaded `Predictor`.

`app.create_app(predictor)` builds the FastAPI application (routes only); requests are
micro-batched into shared forward passes (`batching`), uploads are sniffed and decoded by the
same code as `predict` (`uploads`), slide analyses run as background jobs (`jobs`), and
`static/` holds the page. FastAPI and uvicorn are the optional `serve` extra, imported lazily.
"""

INSTALL_HINT = "pip install -c constraints.txt -e '.[serve]'"
