#!/usr/bin/env bash
# Placeholder until the ONNX Runtime adapter lands.
exit 0
