// prefer-provider: a Smart AI Router routing strategy written in JavaScript.
//
// Candidates whose `provider` equals `params.prefer` come first; every group (preferred and the
// rest) is ordered by `priority` ascending, then `effectiveCost` ascending, then the host's order.
//
// Built into a component with componentize-js (see README.md). The WIT contract is
// `wit/gateway.wit`, world `strategy`: WIT names arrive in camelCase (`effectiveCost`,
// `estimatedPromptTokens`), enums as strings (`'debug'`), `option<T>` as the value or
// `undefined`, `u64` as BigInt. Returning a value answers `ok`; throwing a *string* answers
// `err`. Anything else that escapes (an `Error`, a `TypeError` from a bug) traps the instance,
// so `rank` below turns every exception into a string.
//
// The host keeps a warm instance and calls it again and again: keep no state between calls.

import { log } from 'smart-router:gateway/host@0.2.0';

function rankCandidates(request, candidates, params) {
  // An `err` makes the host fall back to priority order and count the failure.
  const prefer = JSON.parse(params).prefer;
  if (typeof prefer !== 'string' || prefer === '') {
    throw 'strategy_params.prefer must name a provider';
  }

  const order = candidates.map((_, i) => i);
  order.sort((a, b) => {
    const ca = candidates[a];
    const cb = candidates[b];
    const pa = ca.provider === prefer ? 0 : 1;
    const pb = cb.provider === prefer ? 0 : 1;
    return pa - pb || ca.priority - cb.priority || ca.effectiveCost - cb.effectiveCost || a - b;
  });

  const preferred = order.filter((i) => candidates[i].provider === prefer).length;
  log('debug', `prefer-provider: ${preferred} of ${candidates.length} candidates from ${prefer} for ${request.model}`);
  return { order, explanation: `javascript: preferred ${prefer}` };
}

function rank(request, candidates, params) {
  try {
    return rankCandidates(request, candidates, params);
  } catch (e) {
    throw String(e);
  }
}

// The exported `routing` interface: an object named after it, holding its functions.
export const routing = { rank };
