import { describe, expect, it } from 'vitest';

import { PanelOutputFacts, panelOutputState } from '../src/panelstate';

const facts = (over: Partial<PanelOutputFacts>): PanelOutputFacts =>
  ({ hasView: false, failed: false, kernelGone: false, noKernel: false, ...over });

describe('panelOutputState', () => {
  it('shows the widget while it has a view and its kernel', () => {
    expect(panelOutputState(facts({ hasView: true }))).toBe('live');
  });
  it('waits (the widget renderer shows its own loading state) until the view or the error comes', () => {
    expect(panelOutputState(facts({}))).toBe('pending');
  });
  it('shows the hint once the widget renderer gives up (reopened after the kernel went)', () => {
    expect(panelOutputState(facts({ failed: true }))).toBe('stale');
  });
  it('shows the hint over a view whose kernel restarted, died or was replaced (its widgets no longer answer)', () => {
    expect(panelOutputState(facts({ hasView: true, kernelGone: true }))).toBe('stale');
    expect(panelOutputState(facts({ kernelGone: true }))).toBe('stale');
  });
  it('shows the hint in a notebook without a kernel', () => {
    expect(panelOutputState(facts({ noKernel: true }))).toBe('stale');
    expect(panelOutputState(facts({ hasView: true, noKernel: true }))).toBe('stale');
  });
});
