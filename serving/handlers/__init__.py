"""The API's handlers, one module per part of the API, each with its own route table
(joined in :mod:`serving.routes`)."""
