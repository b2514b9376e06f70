"""The names of the evaluation metrics: logged by every run, returned to the study, read by the report."""

MIOU = "val/mIoU"  # mean IoU over the evaluated classes (data.eval_classes)
PIXEL_ACC = "val/pixel_acc"
MIOU_RARE = "val/mIoU_rare"  # mean IoU over the label set's rare classes (when it names some)
OBJECTIVES = (MIOU, PIXEL_ACC, MIOU_RARE)  # what ``objective`` may name
