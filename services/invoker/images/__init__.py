"""Image storage: PNG files under the root with a record each (ImageService's domain)."""
