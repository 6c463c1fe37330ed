"""The shared core: model specs and the zoo, weights, the image pipeline, model loading,
artifacts, errors and file IO. Every job package (run, choose, shrink, serve, train) builds on it."""
