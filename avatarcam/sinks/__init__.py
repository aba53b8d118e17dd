"""Frame sinks the outputs stage publishes to: the video file here; the virtual camera is avatarcam.vcam and the
preview window avatarcam.preview."""
