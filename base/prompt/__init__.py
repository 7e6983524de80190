"""Prompt processing components: CcdProcessor, Association and AlertPublisher."""
