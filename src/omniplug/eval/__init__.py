"""Task metrics. ``omniplug.eval.segmentation``: LISA's gIoU / cIoU and the evaluation loop."""
