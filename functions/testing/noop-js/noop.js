// A JavaScript function that does nothing: benchmark #9's per-event
// overhead (fresh instance + call + drop) of a JavaScript component.
export function handle(ctx, event) {
  return [];
}
