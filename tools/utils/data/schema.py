"""The fields of the Tencent Look-alike data in our on-disk format (net.py reads them from schema.json).

Field order is part of the on-disk format: column j of `static` is
STATIC_FIELDS[j], the 50 columns of `dynamic` are the 7 lists of
DYNAMIC_FIELDS side by side (widths DYNAMIC_WIDTHS), and so on.
"""
import numpy as np

STATIC_FIELDS = ("carrier", "consumptionAbility", "LBS", "age",
                 "education", "gender", "house")
DYNAMIC_FIELDS = ("interest1", "interest2", "interest3",
                  "kw1", "kw2", "topic1", "topic2")
DYNAMIC_WIDTHS = (10, 10, 10, 5, 5, 5, 5)
AD_FIELDS = ("advertiserId", "campaignId", "creativeSize",
             "adCategoryId", "productId", "productType")
# The id arrays of a stage, in embedding-table order, and their fields.
GROUPS = ("static", "dynamic", "ad")
GROUP_FIELDS = dict(zip(GROUPS, (STATIC_FIELDS, DYNAMIC_FIELDS, AD_FIELDS)))

# Vocabulary maxima (largest label-encoded id) of the processed Tencent data,
# from the reference notes; a table has max + 1 rows.
TENCENT_MAX_IDXS = {
    "static": [3, 2, 855, 5, 7, 2, 1],
    "dynamic": [124, 82, 12, 263312, 49780, 10002, 9984],
    "ad": [78, 137, 14, 39, 32, 3],
}

# Column offsets of each list inside `dynamic`: field j spans
# DYNAMIC_OFFSETS[j] : DYNAMIC_OFFSETS[j + 1].
DYNAMIC_OFFSETS = tuple(int(x) for x in np.concatenate([[0], np.cumsum(DYNAMIC_WIDTHS)]))
DYNAMIC_WIDTH = DYNAMIC_OFFSETS[-1]  # 50

# Arrays of one stage file: name -> (dtype, trailing shape, required).
ARRAYS = {
    "label": (np.int8, (), True),
    "aid": (np.int32, (), True),
    "static": (np.int32, (len(STATIC_FIELDS),), True),
    "dynamic": (np.int32, (DYNAMIC_WIDTH,), True),
    "lengths": (np.int32, (len(DYNAMIC_FIELDS),), True),
    "ad": (np.int32, (len(AD_FIELDS),), True),
    "uid": (np.int64, (), False),
}
