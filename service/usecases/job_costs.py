"""A job's cost estimate at submit: fal's price for its model (`fal.pricing`) applied to its input
(`jobs.costs`). None when fal gives no price for the model: unknown, never a guess."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from service.jobs import costs

if TYPE_CHECKING:
    from service.fal.pricing import PriceBook
    from service.jobs.models import JobCost


async def estimate_cost(prices: PriceBook | None, model_id: str, model_input: dict[str, Any]) -> JobCost | None:
    price = None if prices is None else await prices.price(model_id)
    if price is None:
        return None
    return costs.estimate(model_id, model_input, unit=price.unit, unit_price=price.unit_price, currency=price.currency)
