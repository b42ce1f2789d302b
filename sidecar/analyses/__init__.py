"""AI analysis of studies: analyses requested through the API or run on every stable study,
analyzers built in (`quality`, operator-supplied ONNX models) or external (DICOM UPS-RS work
items, IHE AI Workflow for Imaging), results stored as DICOM Structured Reports (TID 1500, IHE AI
Results) and reviewed by a radiologist before anyone acts on them."""
