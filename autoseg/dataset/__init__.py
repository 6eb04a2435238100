"""Raw datasets: dataset.json, case discovery, image I/O with geometry, verification."""
