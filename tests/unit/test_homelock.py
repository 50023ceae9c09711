"""A home is held by one process at a time (node.homelock)."""
import pytest

from node.homelock import HomeInUse, home_in_use
from node.service import Service


def test_a_home_is_held_by_one_service_at_a_time(tmp_path):
    home = tmp_path / "home"
    first = Service(home)
    assert home_in_use(home)
    with pytest.raises(HomeInUse, match="already running for"):
        Service(home)
    first.close()
    assert not home_in_use(home)
    Service(home).close()                      # free again once the first is closed
