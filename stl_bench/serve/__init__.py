"""Serving: Ray Serve application, HTTP runner and Triton model repository."""
