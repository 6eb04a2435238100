"""geometry_problem: the one check of a geometry against its array, shared by ensemble and predict."""

import pytest

from autoseg.dataset.imageio import Geometry
from autoseg.utils.grid_check import geometry_problem

EYE3 = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@pytest.mark.parametrize("geometry, shape", [
    (Geometry((3.0, 0.5, 0.7), (1.0, 2.0, 3.0), EYE3), (2, 4, 5)),
    (Geometry((999.0, 0.5, 0.7), (1.0, 2.0), (0.0, 1.0, 1.0, 0.0)), (1, 4, 5)),  # a 2D image, axes swapped
    (Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0.3, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)), (2, 4, 5)),  # sheared
    (Geometry((0.001, 0.5, 0.5), (90000.0, -12345.678, 5e5), EYE3), (2, 4, 5)),  # a microscopy stage's origin
])
def test_a_geometry_that_places_its_array_passes(geometry, shape):
    assert geometry_problem(geometry, shape) is None


@pytest.mark.parametrize("geometry, shape, problem", [
    (Geometry((1.0, 1.0), (0.0, 0.0, 0.0), EYE3), (2, 4, 5), "spacing [1.0, 1.0], origin [0.0, 0.0, 0.0] and direction of 9 values for an array of 3 spatial axes"),
    (Geometry((1.0,) * 3, (0.0,) * 4, EYE3), (2, 4, 5), "origin [0.0, 0.0, 0.0, 0.0] and direction of 9 values for an array of 3 spatial axes"),
    (Geometry((1.0,) * 3, (0.0, 0.0), (1.0, 0.0, 0.0, 1.0)), (3, 4, 5), "direction of a 2D image for an array of 3 slices"),
    (Geometry((1.0, 0.0, 1.0), (0.0,) * 3, EYE3), (2, 4, 5), "spacing [1.0, 0.0, 1.0] is not positive and finite"),
    (Geometry((1.0,) * 3, (0.0,) * 3, (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1e-9)), (2, 4, 5),
     "is singular (determinant 1e-09)"),
    (Geometry((1.0,) * 3, (0.0, -2e13, 0.0), EYE3), (2, 4, 5), "its origin (0, -2e+13, 0) lies so far from 0 that "
     "positions there are exact to only 0.00391 mm, coarser than a thousandth of its 1 mm voxel side (a damaged header?)"),
])
def test_a_geometry_that_cannot_place_its_array_is_named(geometry, shape, problem):
    assert problem in geometry_problem(geometry, shape)
